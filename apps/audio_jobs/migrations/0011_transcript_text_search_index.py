"""Search of this release, and an index for transcribing again:

* `Transcript.search_vector`: `to_tsvector('simple', COALESCE(text, ''))`, stored (a nullable
  column: adding it rewrites nothing). On PostgreSQL a trigger keeps it (on insert, and on update
  when the text changes or the vector is null), existing rows are filled in batches of
  `BACKFILL_BATCH` (each its own transaction: the table stays writable), and the GIN index
  `transcript_text_search` on it serves `GET /jobs?q=` (apps/audio_jobs/selectors.job_list).
  The index is PostgreSQL only and kept out of the model state (`AddPostgreSQLIndexOnline`).
  SQLite has the column, unused (its search is a substring scan).
* `job_retranscribed_from`: the jobs transcribed again from a job, which deleting it sets to null
  (without it, every job deletion would scan the job table).

Indexes are built CONCURRENTLY on PostgreSQL (the job and transcript tables are written all the
time); the migration is not atomic, and each step can run again.
"""

import django.contrib.postgres.search
from django.contrib.postgres.indexes import GinIndex
from django.db import migrations, models

from apps.core.migration_operations import (
    AddFieldIfMissing,
    AddIndexOnline,
    AddPostgreSQLIndexOnline,
    RunPostgreSQL,
)

BACKFILL_BATCH = 2000

TRIGGER = """
CREATE OR REPLACE FUNCTION audio_jobs_transcript_search_vector() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.search_vector IS NULL OR NEW.text IS DISTINCT FROM OLD.text THEN
        NEW.search_vector := to_tsvector('simple'::regconfig, COALESCE(NEW.text, ''));
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS transcript_search_vector ON audio_jobs_transcript;
CREATE TRIGGER transcript_search_vector BEFORE INSERT OR UPDATE ON audio_jobs_transcript
    FOR EACH ROW EXECUTE FUNCTION audio_jobs_transcript_search_vector();
"""
DROP_TRIGGER = """
DROP TRIGGER IF EXISTS transcript_search_vector ON audio_jobs_transcript;
DROP FUNCTION IF EXISTS audio_jobs_transcript_search_vector();
"""


def backfill(apps, schema_editor):
    """Fill the vector of the rows written before the trigger, in key order, a batch per
    transaction (the migration is not atomic)."""
    if schema_editor.connection.vendor != "postgresql":
        return
    last = None
    with schema_editor.connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT job_id FROM audio_jobs_transcript WHERE (%s::uuid IS NULL OR job_id > %s)"
                " ORDER BY job_id LIMIT %s",
                [last, last, BACKFILL_BATCH],
            )
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return
            cursor.execute(
                "UPDATE audio_jobs_transcript SET search_vector = "
                "to_tsvector('simple'::regconfig, COALESCE(text, '')) "
                "WHERE job_id = ANY(%s) AND search_vector IS NULL",
                [ids],
            )
            last = ids[-1]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("audio_jobs", "0010_job_retranscribed_from"),
    ]

    operations = [
        AddIndexOnline(
            model_name="transcriptionjob",
            index=models.Index(
                condition=models.Q(("retranscribed_from__isnull", False)),
                fields=["retranscribed_from"],
                name="job_retranscribed_from",
            ),
        ),
        AddFieldIfMissing(
            model_name="transcript",
            name="search_vector",
            field=django.contrib.postgres.search.SearchVectorField(editable=False, null=True),
        ),
        RunPostgreSQL(TRIGGER, DROP_TRIGGER),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
        AddPostgreSQLIndexOnline(
            model_name="transcript",
            index=GinIndex(fields=["search_vector"], name="transcript_text_search"),
        ),
    ]
