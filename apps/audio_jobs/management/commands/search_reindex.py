"""Build every transcript's search vector again (after `CREATE EXTENSION unaccent` was run on a
database where migration 0016 could not create it, or after a restore from an old dump)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from apps.audio_jobs.search_index import CONFIGURE_SQL, folds_accents, rebuild_vectors


class Command(BaseCommand):
    help = "Rebuild the stored search vectors of all transcripts, in batches (PostgreSQL)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch", type=int, default=500, help="Rows per transaction.")

    def handle(self, *args, **options) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("Only PostgreSQL stores search vectors (SQLite scans the text).")
        if options["batch"] < 1:
            raise CommandError("--batch must be at least 1.")
        with connection.cursor() as cursor:
            cursor.execute(CONFIGURE_SQL)  # maps `unaccent` if it is there now
        folds = folds_accents(connection)
        done = rebuild_vectors(connection, batch=options["batch"])
        how = "accents folded" if folds else "accents kept (no unaccent extension)"
        self.stdout.write(f"Rebuilt the search vectors of {done} transcripts ({how}).")
