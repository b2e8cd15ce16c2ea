"""Re-encrypt every encrypted field under the first key of FIELD_ENCRYPTION_KEYS."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.core.crypto import reencrypt_all


class Command(BaseCommand):
    help = (
        "Re-encrypt every value encrypted at rest under the first (current) key of "
        "FIELD_ENCRYPTION_KEYS, and encrypt any legacy plaintext. Afterwards every other key can "
        "be removed. Exits non-zero if a value cannot be decrypted with any configured key."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be re-encrypted."
        )

    def handle(self, *args, **options) -> None:
        dry_run = options["dry_run"]
        counts = reencrypt_all(dry_run=dry_run)
        verb = "would re-encrypt" if dry_run else "re-encrypted"
        for count in counts:
            self.stdout.write(
                f"{count.label}: {count.current} current, {verb} {count.rotated}, "
                f"{'would encrypt' if dry_run else 'encrypted'} {count.encrypted_plaintext} "
                f"plaintext, {count.undecryptable} undecryptable"
                + (
                    f", {count.changed_meanwhile} changed meanwhile"
                    if count.changed_meanwhile
                    else ""
                )
            )
        undecryptable = sum(count.undecryptable for count in counts)
        if undecryptable:
            raise CommandError(
                f"{undecryptable} value(s) cannot be decrypted with any key in "
                "FIELD_ENCRYPTION_KEYS (see the log for which rows): keep every key until the one "
                "that encrypted them is found, or rotate the affected webhook secrets."
            )
        changed = sum(count.changed_meanwhile for count in counts)
        if changed and not dry_run:
            # Rewritten by the application between the read and the write, so not checked here:
            # a process still on the old key list may have written them under the old key.
            raise CommandError(
                f"{changed} value(s) changed while this ran and were not checked: run the command "
                "again, and remove no key until it ends with exit status 0."
            )
        pending = sum(count.rotated + count.encrypted_plaintext for count in counts)
        if dry_run:
            self.stdout.write(
                f"{pending} value(s) would be re-encrypted (dry run: nothing written)"
            )
        else:
            self.stdout.write(
                f"{pending} value(s) re-encrypted: every value is under the first key; the other "
                "keys can now be removed from FIELD_ENCRYPTION_KEYS."
            )
