"""New indexes are built without blocking writes on PostgreSQL, and plainly on SQLite."""

from __future__ import annotations

import io
import os

import pytest
from django.core.management import call_command

from tests.support.processes import run_manage


@pytest.mark.parametrize(
    ("app", "migration", "statements"),
    [
        ("audit", "0003", ["CREATE INDEX CONCURRENTLY"]),
        ("reports", "0003", ["CREATE INDEX CONCURRENTLY", "DROP INDEX CONCURRENTLY"]),
        ("webhooks", "0003", ["CREATE INDEX CONCURRENTLY", "DROP INDEX CONCURRENTLY"]),
        ("audio_jobs", "0011", ["CREATE INDEX CONCURRENTLY", "USING gin"]),
    ],
)
def test_indexes_of_busy_tables_are_built_concurrently_on_postgresql(
    transactional_db, app, migration, statements
):
    out = io.StringIO()

    call_command("sqlmigrate", app, migration, stdout=out)

    sql = out.getvalue()
    assert all(statement in sql for statement in statements), sql
    assert "BEGIN;" not in sql  # CONCURRENTLY cannot run in a transaction


def test_the_same_migrations_apply_and_unapply_on_sqlite(tmp_path):
    env = {
        "DJANGO_SETTINGS_MODULE": "lexiscore.settings.local",
        "LEXISCORE_VAR_DIR": str(tmp_path),
        "PATH": os.environ["PATH"],
    }

    forwards = run_manage(env, "migrate", "--noinput", "-v0")
    backwards = [
        run_manage(env, "migrate", app, previous, "--noinput", "-v0")
        for app, previous in (
            ("audit", "0002"),
            ("reports", "0002"),
            ("webhooks", "0002"),
            ("audio_jobs", "0009"),  # a PostgreSQL-only index: nothing to build or drop here
        )
    ]
    again = run_manage(env, "migrate", "--noinput", "-v0")

    assert forwards.returncode == 0, forwards.stderr[-2000:]
    assert all(step.returncode == 0 for step in backwards), [s.stderr[-500:] for s in backwards]
    assert again.returncode == 0, again.stderr[-2000:]


def _index_validity(name: str) -> bool | None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s",
            [name],
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


@pytest.fixture
def reports_at_0002(transactional_db):
    """The reports app one migration back (and forward again after the test)."""
    call_command("migrate", "reports", "0002", verbosity=0)
    yield
    call_command("migrate", "reports", verbosity=0)


def test_a_build_waits_for_an_old_transaction_instead_of_timing_out(reports_at_0002):
    """CREATE INDEX CONCURRENTLY waits for every older transaction in the database (here a
    snapshot held 7 s on an unrelated table, like a backup's): past the application's 5 s
    statement timeout, which must not cancel it."""
    import threading

    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    holder = psycopg.connect(
        dbname=params["dbname"], user=params.get("user"), host=params.get("host"),
        port=params.get("port"), autocommit=True,
    )  # fmt: skip
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT count(*) FROM accounts_user")
    threading.Timer(7, holder.execute, args=["COMMIT"]).start()
    try:
        call_command("migrate", "reports", "0003", verbosity=0)
    finally:
        holder.close()

    assert _index_validity("report_org_created_id") is True
    assert _index_validity("report_org_created") is None


@pytest.mark.parametrize("left", ["valid", "invalid"])
def test_a_half_applied_migration_completes_when_run_again(reports_at_0002, left):
    """A cancelled `migrate` between the two operations (or during the build) left the new
    index, valid or INVALID, and the old one, with the migration not recorded."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE INDEX report_org_created_id ON reports_report "
            "(organisation_id, created_at DESC, id DESC)"
        )
        if left == "invalid":
            cursor.execute(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                "'report_org_created_id'::regclass"
            )

    call_command("migrate", "reports", "0003", verbosity=0)

    assert _index_validity("report_org_created_id") is True
    assert _index_validity("report_org_created") is None


@pytest.fixture
def audio_jobs_at_0010(transactional_db):
    """The audio jobs app one migration back (and forward again after the test)."""
    call_command("migrate", "audio_jobs", "0010", verbosity=0)
    yield
    call_command("migrate", "audio_jobs", verbosity=0)


def test_a_postgresql_only_index_is_dropped_and_built_again(audio_jobs_at_0010):
    assert _index_validity("transcript_text_search") is None

    call_command("migrate", "audio_jobs", "0011", verbosity=0)

    assert _index_validity("transcript_text_search") is True


def test_a_postgresql_only_index_left_invalid_is_built_again(audio_jobs_at_0010):
    """A cancelled `migrate` left the GIN index INVALID, the migration not recorded."""
    from django.db import connection

    with connection.cursor() as cursor:
        # The column was added before the cancel: running the migration again keeps it.
        cursor.execute("ALTER TABLE audio_jobs_transcript ADD COLUMN search_vector tsvector")
        cursor.execute(
            "CREATE INDEX transcript_text_search ON audio_jobs_transcript USING gin (search_vector)"
        )
        cursor.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
            "'transcript_text_search'::regclass"
        )

    call_command("migrate", "audio_jobs", "0011", verbosity=0)

    assert _index_validity("transcript_text_search") is True
