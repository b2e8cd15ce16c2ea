"""Operate the dead-letter store: `list`, `requeue` (by id or all pending), `purge`."""

from __future__ import annotations

import argparse
import uuid
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.core import selectors, services
from apps.core.exceptions import ApplicationError
from apps.core.models import DeadLetter


def _dead_letter_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a dead letter id (a UUID): {value!r}") from None


def _at_least(minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}: {value!r}")
        return number

    return parse


class Command(BaseCommand):
    help = "List, requeue or purge dead-lettered task messages."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        list_parser = sub.add_parser("list", help="Show dead letters, newest first.")
        list_parser.add_argument("--status", choices=DeadLetter.Status.values)
        list_parser.add_argument("--task")
        list_parser.add_argument("--limit", type=_at_least(1), default=50)
        requeue = sub.add_parser("requeue", help="Send messages again.")
        requeue.add_argument(
            "ids", nargs="*", type=_dead_letter_id, help="Dead letter ids (default: none)"
        )
        requeue.add_argument("--all", action="store_true", help="Every pending dead letter.")
        requeue.add_argument("--task", help="With --all: only this task name.")
        purge = sub.add_parser("purge", help="Delete dead letters.")
        purge.add_argument("--older-than-days", type=_at_least(0))
        purge.add_argument("--status", choices=DeadLetter.Status.values)
        purge.add_argument("--yes", action="store_true", help="Confirm deletion.")

    def handle(self, *args, **options) -> None:
        getattr(self, f"handle_{options['action']}")(options)

    def handle_list(self, options) -> None:
        rows = selectors.dead_letter_list(status=options["status"], task_name=options["task"])
        for row in rows[: options["limit"]]:
            self.stdout.write(
                f"{row.pk}  {row.created_at:%Y-%m-%d %H:%M:%S}  {row.status:<8}  "
                f"{row.queue:<18} {row.task_name}  attempts={row.attempts}  "
                f"{row.exception_type}: {row.error[:120]}"
            )
        self.stdout.write(f"{rows.count()} dead letter(s)")

    def handle_requeue(self, options) -> None:
        pending = DeadLetter.objects.filter(status=DeadLetter.Status.PENDING)
        if options["all"]:
            rows = selectors.dead_letter_list(
                status=DeadLetter.Status.PENDING, task_name=options["task"]
            )
        elif options["ids"]:
            if options["task"]:
                raise CommandError("--task goes with --all, not with ids.")
            rows = pending.filter(pk__in=options["ids"])
            found = set(rows.values_list("pk", flat=True))
            if missing := set(options["ids"]) - found:
                raise CommandError(
                    f"No pending dead letter with id: {', '.join(sorted(map(str, missing)))}"
                )
        else:
            raise CommandError("Name dead letter ids, or pass --all.")
        count = refused = 0
        for row in rows:
            try:
                services.dead_letter_requeue(dead_letter=row)
            except ApplicationError as exc:
                self.stderr.write(self.style.WARNING(f"{row.pk}: {exc.message}"))
                refused += 1
                continue
            count += 1
        if refused:
            # Non-zero, so a script (or an operator reading only the status) sees the messages
            # that are still pending: broker down, job finished meanwhile, already requeued.
            raise CommandError(
                f"Requeued {count} message(s); {refused} not requeued (see above), still pending."
            )
        self.stdout.write(self.style.SUCCESS(f"Requeued {count} message(s)"))

    def handle_purge(self, options) -> None:
        if not options["yes"]:
            raise CommandError("Purging deletes messages for good: add --yes to confirm.")
        older_than = None
        if options["older_than_days"] is not None:
            older_than = timezone.now() - timedelta(days=options["older_than_days"])
        deleted = services.dead_letter_purge(older_than=older_than, status=options["status"])
        self.stdout.write(self.style.SUCCESS(f"Purged {deleted} dead letter(s)"))
