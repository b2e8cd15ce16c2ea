"""Recompute audio usage against each organisation's monthly quota, from the jobs themselves.

Quotas are checked against this same computation (there is no separate usage counter that could
drift), so the command shows operators exactly what the API enforces.
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.accounts.models import Organisation
from apps.audio_jobs import selectors, services


def _organisation_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an organisation id (a UUID): {value!r}") from None


class Command(BaseCommand):
    help = "Show audio minutes used per organisation in a month, against the plan's quota."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--organisation", type=_organisation_id, help="Organisation id (default: all)."
        )
        parser.add_argument("--month", help="YYYY-MM (default: the current month).")
        parser.add_argument("--json", action="store_true", help="Print JSON lines.")

    def handle(self, *args, **options) -> None:
        if options["month"]:
            try:
                start = datetime.strptime(options["month"], "%Y-%m").replace(
                    tzinfo=timezone.get_current_timezone()
                )
            except ValueError as exc:
                raise CommandError("--month must look like 2026-11.") from exc
        else:
            start = selectors.month_start()
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        organisations = Organisation.objects.order_by("name")
        if options["organisation"]:
            organisations = organisations.filter(pk=options["organisation"])
            if not organisations.exists():
                raise CommandError(f"No organisation {options['organisation']}.")
        for organisation in organisations:
            used = selectors.audio_seconds_used(organisation=organisation, since=start, until=end)
            limit = services.quota_minutes(organisation)
            row = {
                "organisation": str(organisation.pk),
                "name": organisation.name,
                "plan": organisation.plan,
                "month": start.strftime("%Y-%m"),
                "used_minutes": round(used / 60, 2),
                "quota_minutes": limit,
            }
            if options["json"]:
                self.stdout.write(json.dumps(row))
            else:
                quota = "unlimited" if limit is None else f"{limit}"
                self.stdout.write(
                    f"{row['month']}  {organisation.pk}  {organisation.name[:30]:<30} "
                    f"{organisation.plan:<10} {row['used_minutes']:>10} / {quota} min"
                )
