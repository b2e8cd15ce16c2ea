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
        )
    ]
    again = run_manage(env, "migrate", "--noinput", "-v0")

    assert forwards.returncode == 0, forwards.stderr[-2000:]
    assert all(step.returncode == 0 for step in backwards), [s.stderr[-500:] for s in backwards]
    assert again.returncode == 0, again.stderr[-2000:]
