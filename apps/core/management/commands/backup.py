"""Back up the database: pg_dump (custom format) plus a manifest, then keep the newest N."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.core.backups import BackupError, backup_create, backups_prune


class Command(BaseCommand):
    help = "Write a backup (database dump + manifest of row counts and stored files)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dir", type=Path, help="Backup folder (default: BACKUP_DIR).")
        parser.add_argument(
            "--to-storage",
            action="store_true",
            default=None,
            help="Also copy it to the storage backend (default: BACKUP_TO_STORAGE).",
        )
        parser.add_argument("--keep", type=int, help="Backups to keep (default: BACKUP_KEEP).")
        parser.add_argument(
            "--no-file-checksums",
            action="store_true",
            help="List stored files with sizes only (faster on large stores).",
        )

    def handle(self, *args, **options) -> None:
        if options["keep"] is not None and options["keep"] < 1:
            # Checked before the dump: otherwise a backup is written and the command still fails.
            raise CommandError("--keep must be at least 1.")
        try:
            path = backup_create(
                directory=options["dir"],
                to_storage=options["to_storage"],
                file_checksums=not options["no_file_checksums"],
            )
            removed = backups_prune(keep=options["keep"], directory=options["dir"])
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(path))
        for name in removed:
            self.stdout.write(f"pruned {name}")
