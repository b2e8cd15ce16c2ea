"""Bootstrap an organisation and its owner (a verified account) from the command line.

For a first install or a new customer set up by an operator; everyone else registers through
the API or is invited. The password is read from a prompt or LEXISCORE_OWNER_PASSWORD, never
from the command line (it would show in `ps` and shell history).
"""

from __future__ import annotations

import getpass
import os

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Organisation, User, normalise_email
from apps.accounts.network import RequestMeta
from apps.accounts.services import organisation_create


class Command(BaseCommand):
    help = "Create an organisation owned by a new, verified user."

    def add_arguments(self, parser) -> None:
        parser.add_argument("email")
        parser.add_argument("organisation")
        parser.add_argument("--full-name", default="")
        parser.add_argument("--plan", help="Plan of the organisation (default: the default plan).")

    def handle(self, *args, **options) -> None:
        email = normalise_email(options["email"])
        # Every value is checked before the password prompt and before anything is written: a
        # bad one is a clear error, not a traceback (or an owner whose address receives nothing).
        self._check(User, "email", email)
        self._check(User, "full_name", options["full_name"])
        self._check(Organisation, "name", options["organisation"])
        if options["plan"]:
            self._check(Organisation, "plan", options["plan"])
        if User.objects.filter(email=email).exists():
            raise CommandError(f"{email} already has an account.")
        password = os.environ.get("LEXISCORE_OWNER_PASSWORD") or getpass.getpass("Password: ")
        user = User(email=email, full_name=options["full_name"])
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        with transaction.atomic():
            user.set_password(password)
            user.email_verified_at = timezone.now()
            user.save()
            organisation = organisation_create(
                user=user, name=options["organisation"], meta=RequestMeta()
            )
            if options["plan"]:
                organisation.plan = options["plan"]
                organisation.full_clean(validate_unique=False)
                organisation.save(update_fields=["plan", "updated_at"])
        self.stdout.write(
            self.style.SUCCESS(f"Created {organisation.name} ({organisation.pk}) owned by {email}")
        )

    @staticmethod
    def _check(model, field_name: str, value: str) -> None:
        field = model._meta.get_field(field_name)
        try:
            field.clean(value, None)
        except ValidationError as exc:
            raise CommandError(f"{field.verbose_name} {value!r}: {' '.join(exc.messages)}") from exc
