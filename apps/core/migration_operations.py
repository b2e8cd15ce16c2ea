"""Migration operations that keep a live database writable while an index is built or dropped.

`CREATE INDEX` takes a lock that blocks every write to the table for the whole build: minutes
on a large audit trail or delivery log, during which requests and workers that write there wait
(and time out). On PostgreSQL these operations build and drop indexes CONCURRENTLY instead:
writes go on, at the cost of a slower build that cannot run in a transaction, so a migration
using them sets `atomic = False`. Elsewhere (SQLite in embedded mode) they are the plain
operations.

A concurrent build waits for every transaction older than it, in the whole database (a backup's
snapshot, a long worker transaction): it runs without the application's statement timeout (5 s),
which would cancel it. A migration of several such operations is not atomic, so each one can be
run again: an index already built and valid is kept, and one left INVALID by a failed build (a
cancelled `migrate`) is dropped and built again; a drop is `IF EXISTS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db.migrations.operations import AddField, AddIndex, RemoveIndex, RunSQL


def _on_postgresql(schema_editor: Any) -> bool:
    return schema_editor.connection.vendor == "postgresql"


@contextmanager
def _without_statement_timeout(schema_editor: Any) -> Iterator[None]:
    """The statement timeout off for this connection while the block runs (then back to the
    connection's own setting: the connection may go back to a pool)."""
    if schema_editor.collect_sql:  # sqlmigrate: print the statements, run nothing
        yield
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")
    try:
        yield
    finally:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")


def _index_validity(schema_editor: Any, name: str) -> bool | None:
    """Whether index `name` exists and is valid (None: it does not exist)."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
            [name],
        )
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


class _Online:
    """On PostgreSQL the concurrent operation (next in the MRO) without the statement timeout;
    elsewhere the plain one (`plain`)."""

    plain: Any

    def _run(self, method: str, schema_editor: Any, *args: Any) -> Any:
        if not _on_postgresql(schema_editor):
            return getattr(self.plain, method)(self, args[0], schema_editor, *args[1:])
        with _without_statement_timeout(schema_editor):
            return getattr(super(), method)(args[0], schema_editor, *args[1:])

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        return self._run("database_forwards", schema_editor, app_label, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        return self._run("database_backwards", schema_editor, app_label, from_state, to_state)


class AddIndexOnline(_Online, AddIndexConcurrently):
    plain = AddIndex

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if _on_postgresql(schema_editor) and not schema_editor.collect_sql:
            self._ensure_not_in_transaction(schema_editor)
            valid = _index_validity(schema_editor, self.index.name)
            if valid:
                return None
            if valid is False:
                name = schema_editor.quote_name(self.index.name)
                with _without_statement_timeout(schema_editor):
                    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        return super().database_forwards(app_label, schema_editor, from_state, to_state)


class RemoveIndexOnline(_Online, RemoveIndexConcurrently):
    plain = RemoveIndex


class AddPostgreSQLIndexOnline(AddIndexOnline):
    """`AddIndexOnline` for an index only PostgreSQL can build (a GIN index over a text-search
    expression), and a no-op elsewhere, both ways.

    The index stays out of the model state: Django rebuilds a table's model-state indexes
    whenever SQLite remakes it (any later `AlterField`), which would fail on this one. So the
    model does not declare it, `makemigrations` never sees it, and a migration that drops it
    names it again here (`database_backwards` drops it `IF EXISTS`, concurrently).
    """

    def state_forwards(self, app_label, state):  # type: ignore[no-untyped-def]
        pass

    def state_backwards(self, app_label, state):  # type: ignore[no-untyped-def]
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if not _on_postgresql(schema_editor):
            return None
        return super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if not _on_postgresql(schema_editor):
            return None
        return super().database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return (
            f"Concurrently create index {self.index.name} on {self.model_name} "
            "(PostgreSQL only, not in the model state)"
        )


class RunPostgreSQL(RunSQL):
    """`RunSQL` on PostgreSQL (in the migration's own transaction, or its own when the migration
    is not atomic), nothing elsewhere: SQL only PostgreSQL speaks (a trigger in PL/pgSQL) for a
    feature that SQLite does without. `sqlmigrate` prints it."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if _on_postgresql(schema_editor):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if _on_postgresql(schema_editor):
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class AddFieldIfMissing(AddField):
    """`AddField` that keeps a column already there: in a migration that is not atomic, a run
    cancelled after the column was added would otherwise fail when run again."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        model = to_state.apps.get_model(app_label, self.model_name)
        column = model._meta.get_field(self.name).column
        connection = schema_editor.connection
        if not schema_editor.collect_sql:
            with connection.cursor() as cursor:
                columns = connection.introspection.get_table_description(
                    cursor, model._meta.db_table
                )
            if any(c.name == column for c in columns):
                return
        super().database_forwards(app_label, schema_editor, from_state, to_state)
