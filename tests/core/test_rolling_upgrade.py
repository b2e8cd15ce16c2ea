"""Columns added in a release keep the release before it working while `migrate` runs
(docs/operations.md runs it with the old containers still serving): a NOT NULL column the old
code does not know must have a database default, and adding it must not scan a big table."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

# (table, column) added since the last release that old code inserts rows without.
ADDED_NOT_NULL = [
    ("audio_jobs_transcriptionjob", "deliveries_ended"),
    ("reports_report", "error_code"),
]


@pytest.mark.parametrize(("table", "column"), ADDED_NOT_NULL)
def test_a_not_null_column_added_for_this_release_has_a_database_default(table, column):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = %s AND column_name = %s",
            [table, column],
        )
        [(nullable, default)] = cursor.fetchall()

    assert nullable == "NO"
    assert default is not None


def test_the_jobs_new_counter_has_no_check_constraint_to_validate_over_every_job():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = "
            "'audio_jobs_transcriptionjob'::regclass AND contype = 'c' "
            "AND pg_get_constraintdef(oid) LIKE '%%deliveries_ended%%'"
        )
        [(checks,)] = cursor.fetchall()

    assert checks == 0
