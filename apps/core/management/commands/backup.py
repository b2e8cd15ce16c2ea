"""Back up the database: pg_dump (custom format) plus a manifest, then keep the newest N."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.core.backups import BackupError, BackupUploadError, backup_create, backups_prune


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
        except BackupUploadError as exc:
            # The local backup is usable: prune the local ones as after any backup (else a
            # storage outage fills the disk), but leave the copies in storage alone: the newest
            # backup is not among them, so they are the only backups off this host until an
            # upload succeeds (the next successful run prunes them).
            self.stdout.write(str(exc.path))
            self._prune(keep=options["keep"], directory=options["dir"], storage=False)
            raise CommandError(
                f"{exc} Local backups were pruned; the copies in storage were left as they were."
            ) from exc
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(path))
        self._prune(keep=options["keep"], directory=options["dir"], storage=True)

    def _prune(self, *, keep: int | None, directory: Path | None, storage: bool) -> None:
        try:
            removed = backups_prune(keep=keep, directory=directory, storage=storage)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        for name in removed:
            self.stdout.write(f"pruned {name}")
