"""Restore a backup into a database and compare its row counts with the manifest."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.core.backups import (
    BackupError,
    backup_check,
    backup_restore,
    backups_list,
    database_create,
    database_drop,
)


class Command(BaseCommand):
    help = (
        "pg_restore --exit-on-error a backup into DATABASE, then check row counts "
        "(exit 1 on a mismatch)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--database", required=True, help="Target database name.")
        parser.add_argument(
            "--backup", type=Path, help="Backup folder (default: the newest in --dir / BACKUP_DIR)."
        )
        parser.add_argument("--dir", type=Path, help="Where to look for the newest backup.")
        parser.add_argument(
            "--create",
            action="store_true",
            help="Create the target database first (dropped again if the restore fails).",
        )
        parser.add_argument(
            "--force-live",
            action="store_true",
            help="Allow restoring into the database the platform is using.",
        )

    def handle(self, *args, **options) -> None:
        backup = options["backup"]
        if backup is None:
            backups = backups_list(options["dir"])
            if not backups:
                raise CommandError("No backup found.")
            backup = backups[-1]
        created = False
        try:
            # A backup that cannot be restored is refused before any database is created.
            manifest = backup_check(backup)
            if options["create"]:
                database_create(options["database"])
                created = True
            report = backup_restore(
                backup=backup,
                database_name=options["database"],
                allow_live=options["force_live"],
                manifest=manifest,
            )
        except BackupError as exc:
            if created:  # nothing useful in it; a second `--create` run would find it in the way
                database_drop(options["database"])
            raise CommandError(str(exc)) from exc
        for table, (expected, actual) in report.mismatches.items():
            self.stderr.write(f"MISMATCH {table}: manifest {expected}, restored {actual}")
        if not report.ok:
            raise CommandError(f"Restored {backup.name} into {report.database}: row counts differ.")
        self.stdout.write(
            f"Restored {backup.name} into {report.database}: "
            f"{len(report.actual)} tables, row counts match the manifest."
        )
