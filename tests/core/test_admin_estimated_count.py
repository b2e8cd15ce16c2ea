"""The admin lists of the tables that only grow (audit trail, jobs, live feed) count an unfiltered
page from PostgreSQL's estimate once the table is large, instead of a COUNT(*) over the whole
table per page view; small or filtered lists are counted exactly."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.audit.models import AuditAction, AuditEvent
from apps.audit.services import audit_record
from apps.core.admin import EstimatedCountPaginator
from apps.feed.models import FeedEvent, FeedEventType
from tests.audio_jobs.factories import JobFactory
from tests.factories import OrganisationFactory


def audit_rows(count: int) -> None:
    for _ in range(count):
        audit_record(action=AuditAction.LOGIN_FAILED, actor="system")


def job_rows(count: int) -> None:
    organisation = OrganisationFactory()
    for _ in range(count):
        JobFactory(organisation=organisation)


def feed_rows(count: int) -> None:
    organisation = OrganisationFactory()
    FeedEvent.objects.bulk_create(
        FeedEvent(organisation=organisation, type=FeedEventType.JOB_QUEUED, subject_id=uuid.uuid4())
        for _ in range(count)
    )


LISTS = [
    pytest.param("/admin/audit/auditevent/", "audit_auditevent", audit_rows, id="audit"),
    pytest.param(
        "/admin/audio_jobs/transcriptionjob/",
        "audio_jobs_transcriptionjob",
        job_rows,
        id="jobs",
    ),
    pytest.param("/admin/feed/feedevent/", "feed_feedevent", feed_rows, id="feed"),
]


def changelist(client, url: str, table: str):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response.content.decode()[:2000]
    counts = [
        q["sql"]
        for q in queries.captured_queries
        if "COUNT(" in q["sql"] and f'FROM "{table}"' in q["sql"]
    ]
    return response.context["cl"].result_count, counts


def analyze(table: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f'ANALYZE "{table}"')


@pytest.mark.parametrize(("url", "table", "rows"), LISTS)
def test_a_large_unfiltered_list_is_counted_from_the_estimate(
    admin_client, db, monkeypatch, url, table, rows
):
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_threshold", 10)
    rows(30)
    analyze(table)
    rows(5)  # written after ANALYZE: the estimate does not know them yet

    result_count, counts = changelist(admin_client, url, table)

    assert result_count == 30  # the planner's estimate, not the 35 rows there are
    assert counts == []


@pytest.mark.parametrize(("url", "table", "rows"), LISTS)
def test_a_list_estimated_below_the_threshold_is_counted_exactly(
    admin_client, db, monkeypatch, url, table, rows
):
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_threshold", 100)
    rows(30)
    analyze(table)
    rows(5)

    result_count, counts = changelist(admin_client, url, table)

    assert result_count == 35
    assert len(counts) == 1


def test_a_filtered_list_is_counted_exactly_however_large_the_table(admin_client, db, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_threshold", 10)
    audit_rows(30)
    audit_record(action=AuditAction.LOGOUT, actor="system")
    analyze("audit_auditevent")

    filtered, filtered_counts = changelist(
        admin_client, "/admin/audit/auditevent/?action=auth.logout", "audit_auditevent"
    )
    searched, searched_counts = changelist(
        admin_client, "/admin/audit/auditevent/?q=nobody", "audit_auditevent"
    )

    assert (filtered, len(filtered_counts)) == (1, 1)
    assert (searched, len(searched_counts)) == (0, 1)


def test_other_databases_are_always_counted_exactly(db, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_threshold", 0)
    audit_rows(3)
    analyze("audit_auditevent")
    monkeypatch.setattr(connection, "vendor", "sqlite")

    paginator = EstimatedCountPaginator(AuditEvent.objects.all(), 100)

    with CaptureQueriesContext(connection) as queries:
        assert paginator.count == 3
    assert not [q for q in queries.captured_queries if "pg_class" in q["sql"]]


def test_the_feed_admin_is_read_only_and_finds_events_by_id(admin_client, db):
    organisation = OrganisationFactory()
    job_id = uuid.uuid4()
    event = FeedEvent.objects.create(
        organisation=organisation, type=FeedEventType.JOB_COMPLETED, subject_id=job_id
    )
    FeedEvent.objects.create(organisation=OrganisationFactory(), type=FeedEventType.JOB_QUEUED)

    by_job = admin_client.get(f"/admin/feed/feedevent/?q={job_id}")
    by_organisation = admin_client.get(f"/admin/feed/feedevent/?q={organisation.pk}")
    by_text = admin_client.get("/admin/feed/feedevent/?q=completed")
    detail = admin_client.get(f"/admin/feed/feedevent/{event.pk}/change/")
    deleted = admin_client.post(f"/admin/feed/feedevent/{event.pk}/delete/", {"post": "yes"})

    assert [e.pk for e in by_job.context["cl"].result_list] == [event.pk]
    assert [e.pk for e in by_organisation.context["cl"].result_list] == [event.pk]
    assert list(by_text.context["cl"].result_list) == []
    assert detail.status_code == 200
    assert 'name="type"' not in detail.content.decode()  # read-only
    assert deleted.status_code == 403
    assert FeedEvent.objects.filter(pk=event.pk).exists()
