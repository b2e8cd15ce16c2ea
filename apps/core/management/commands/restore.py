"""Restore a backup into a database and compare its row counts with the manifest."""

from __future__ import annotations

import subprocess
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

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
        except BaseException as exc:
            # Whatever stopped it (pg_restore failing or timing out, a database error while
            # counting rows, Ctrl-C): a database this run created holds nothing useful, and a
            # second `--create` run would find it in the way.
            if created:
                database_drop(options["database"])
            if isinstance(exc, BackupError):
                raise CommandError(str(exc)) from exc
            if isinstance(exc, subprocess.TimeoutExpired):
                raise CommandError(f"pg_restore did not finish in {exc.timeout:.0f} s.") from exc
            if isinstance(exc, DatabaseError):
                raise CommandError(f"The restored database could not be read: {exc}") from exc
            raise
        for table, (expected, actual) in report.mismatches.items():
            self.stderr.write(f"MISMATCH {table}: manifest {expected}, restored {actual}")
        if not report.ok:
            kept = (
                f" The database {report.database} is kept for inspection; drop it before running"
                " the same `--create` again."
                if created
                else ""
            )
            raise CommandError(
                f"Restored {backup.name} into {report.database}: row counts differ.{kept}"
            )
        self.stdout.write(
            f"Restored {backup.name} into {report.database}: "
            f"{len(report.actual)} tables, row counts match the manifest."
        )
