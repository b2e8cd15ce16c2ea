"""Search that folds accents: "cafe" finds "café", "Zurich" finds "Zürich" (and the reverse).

* A text search configuration `lexiscore_search`: a copy of `simple` whose words go through the
  `unaccent` dictionary first, and `lexiscore_fold(text)` for file names
  (apps/audio_jobs/search_index.CONFIGURE_SQL). `unaccent` ships with PostgreSQL's contrib and is a trusted
  extension (PostgreSQL 13+: the database's owner may create it). Where it cannot be created,
  a notice says so and the configuration is a plain copy of `simple`: search works, keeping
  accents, as before; create the extension and run `manage.py search_reindex` later.
* The trigger builds `search_vector` with it, and every stored vector is built again, in
  batches of `BATCH` (each its own transaction: the table stays writable; no statement timeout
  meanwhile). A run stopped half way starts again from the first row when run again.
Until the new release serves the queries (apps/audio_jobs/selectors.SEARCH_CONFIG), the old one
misses accented words in rebuilt rows: run the migration with the deploy, not days before.
"""

from django.db import migrations

from apps.audio_jobs.search_index import CONFIGURE_SQL, UNCONFIGURE_SQL
from apps.core.migration_operations import RunPostgreSQL

BATCH = 500

def trigger(config: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION audio_jobs_transcript_search_vector() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.search_vector IS NULL OR NEW.text IS DISTINCT FROM OLD.text THEN
        NEW.search_vector := to_tsvector('{config}'::regconfig, COALESCE(NEW.text, ''));
    END IF;
    RETURN NEW;
END
$$;
"""


def rebuild(config: str):
    def run(apps, schema_editor):
        from apps.audio_jobs.search_index import rebuild_vectors

        if schema_editor.connection.vendor == "postgresql":
            rebuild_vectors(schema_editor.connection, config=config, batch=BATCH)

    return run


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("audio_jobs", "0015_transcript_shares"),
    ]

    operations = [
        # Reversed, the steps run backwards: vectors rebuilt with `simple` (set explicitly, the
        # trigger keeps them), then the trigger, then the configuration dropped.
        RunPostgreSQL(CONFIGURE_SQL, UNCONFIGURE_SQL),
        RunPostgreSQL(trigger("lexiscore_search"), trigger("simple")),
        migrations.RunPython(rebuild("lexiscore_search"), rebuild("simple"), elidable=True),
    ]
