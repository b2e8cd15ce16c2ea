"""Admin list pages of the tables that only grow (jobs, the audit trail) never scan them whole
for their filters or date drill-down: one COUNT for the paginator and the page itself."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory


def table_queries(client, url: str, table: str) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return [q["sql"] for q in queries.captured_queries if f'FROM "{table}"' in q["sql"]], response


@pytest.mark.parametrize(
    "url",
    [
        "/admin/audio_jobs/transcriptionjob/",
        "/admin/audio_jobs/transcriptionjob/?status__exact=failed",
    ],
)
def test_the_jobs_list_counts_once_and_runs_no_distinct_or_min_max(admin_client, db, url):
    CompletedJobFactory()
    JobFactory()

    sql, _ = table_queries(admin_client, url, "audio_jobs_transcriptionjob")

    assert not [q for q in sql if "DISTINCT" in q or "MIN(" in q], sql
    assert len([q for q in sql if "COUNT(" in q]) == 1, sql


def test_the_jobs_list_still_filters_by_model_and_engine(admin_client, db):
    tiny = CompletedJobFactory(model_used="tiny.en", engine="faster-whisper")
    base = CompletedJobFactory(model_used="base", engine="openai-whisper")

    _, response = table_queries(
        admin_client,
        "/admin/audio_jobs/transcriptionjob/?model_used=tiny.en&engine=faster-whisper",
        "audio_jobs_transcriptionjob",
    )

    body = response.content.decode()
    assert str(tiny.pk) in body
    assert str(base.pk) not in body


def test_the_audit_list_runs_no_distinct_or_min_max_over_the_trail(admin_client, db):
    audit_record(action=AuditAction.ORGANISATION_CREATED, actor="system")
    audit_record(action=AuditAction.LOGIN_FAILED, actor="system", target_repr="needle")

    sql, _ = table_queries(admin_client, "/admin/audit/auditevent/", "audit_auditevent")
    _, filtered = table_queries(
        admin_client, "/admin/audit/auditevent/?action=auth.login_failed", "audit_auditevent"
    )

    assert not [q for q in sql if "DISTINCT" in q or "MIN(" in q], sql
    assert len([q for q in sql if "COUNT(" in q]) == 1, sql
    assert "needle" in filtered.content.decode()
    assert "Organisation created" in filtered.content.decode()  # offered as a filter option
