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
    ("audio_jobs_transcriptionjob", "redact_pii"),
    ("audio_jobs_transcriptionjob", "redact_pii_audio"),
    ("audio_jobs_transcriptionjob", "redact_pii_sub"),
    ("audio_jobs_transcriptionjob", "legal_hold_reason"),
    ("audio_jobs_transcriptionjob", "quality_rerun"),
    ("audio_jobs_transcriptionjob", "diarize"),
    ("audio_jobs_transcriptionjob", "speaker_names"),
    ("accounts_organisation", "redact_pii"),
    ("accounts_organisation", "redact_pii_audio"),
    ("accounts_organisation", "share_links_enabled"),
    ("webhooks_webhookdelivery", "redeliveries"),
    ("audio_jobs_transcriptionjob", "hotwords"),
    ("accounts_organisation", "hotwords"),
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


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("audio_jobs_transcriptionjob", "deliveries_ended"),
        ("webhooks_webhookdelivery", "redeliveries"),
    ],
)
def test_a_new_counter_has_no_check_constraint_to_validate_over_every_row(table, column):
    """A PositiveIntegerField's CHECK would be validated by scanning the whole table under the
    lock that adding the column takes."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c' "
            "AND pg_get_constraintdef(oid) LIKE %s",
            [table, f"%{column}%"],
        )
        [(checks,)] = cursor.fetchall()

    assert checks == 0


def test_the_previous_release_can_still_insert_jobs_and_organisations(db):
    """An insert naming only the columns the release before this one knew."""
    import uuid

    organisation_id, job_id = uuid.uuid4(), uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO accounts_organisation (id, name, plan, is_active, created_at, updated_at)"
            " VALUES (%s, 'Old', 'free', true, now(), now())",
            [organisation_id],
        )
        cursor.execute(
            "INSERT INTO audio_jobs_transcriptionjob (id, organisation_id, status, progress, "
            "attempts, deliveries_ended, cancel_requested, language, model_profile, task, "
            "word_timestamps, initial_prompt, priority, callback_url, idempotency_key, "
            "audio_key, original_filename, container, codec, audio_validated, worker, "
            "error_code, error_message, engine, model_used, model_sha256, engine_settings, "
            "created_at, updated_at) VALUES (%s, %s, 'queued', 0, 0, 0, false, '', '', "
            "'transcribe', true, '', 5, '', '', 'k', 'a.wav', '', '', false, '', '', '', '', '', "
            "'', '{}', now(), now())",
            [job_id, organisation_id],
        )
        cursor.execute(
            "SELECT redact_pii, redact_pii_audio, redact_pii_sub, quality_rerun, "
            "legal_hold_reason, diarize, speaker_names FROM audio_jobs_transcriptionjob "
            "WHERE id = %s",
            [job_id],
        )
        policies, *rest = cursor.fetchone()
    assert policies in ([], "[]")  # jsonb comes back as text through Django's cursor
    *rest, names = rest
    assert rest == [False, "entity_name", False, "", False]
    assert names in ({}, "{}")
