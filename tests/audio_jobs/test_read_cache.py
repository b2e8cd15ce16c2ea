"""Cached job and report reads (apps.core.generations): served from the cache, never stale.

Each test reads once (so the page or job is cached), changes the data through one of the
application's write paths, and checks that the next read already shows the change.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Role
from apps.audio_jobs.models import READ_CACHE, JobStatus, TranscriptionJob
from apps.reports.models import Report
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory
from tests.factories import bearer, member

JOBS = "/api/v1/jobs"


def job_queries(queries) -> list[str]:
    return [q["sql"] for q in queries if "audio_jobs_transcriptionjob" in q["sql"]]


@pytest.fixture
def owner(db):
    return member(Role.OWNER)


@pytest.fixture
def auth(owner):
    return bearer(owner.user, owner.organisation)


def test_a_page_of_jobs_is_served_from_the_cache(api_client, auth, owner):
    for _ in range(3):
        JobFactory(organisation=owner.organisation)
    first = api_client.get(JOBS, {"page_size": 2}, **auth)

    with CaptureQueriesContext(connection) as queries:
        second = api_client.get(JOBS, {"page_size": 2}, **auth)

    assert second.status_code == 200
    assert second.json() == first.json()
    assert job_queries(queries) == []
    # Links stay absolute and point at this host.
    assert second.json()["next"] == "http://testserver/api/v1/jobs?page=2&page_size=2"


def test_a_job_is_served_from_the_cache(api_client, auth, owner):
    job = JobFactory(organisation=owner.organisation)
    first = api_client.get(f"{JOBS}/{job.pk}", **auth)

    with CaptureQueriesContext(connection) as queries:
        second = api_client.get(f"{JOBS}/{job.pk}", **auth)

    assert second.json() == first.json()
    assert job_queries(queries) == []


def test_a_new_job_appears_in_the_next_list(api_client, auth, owner):
    assert api_client.get(JOBS, **auth).json()["count"] == 0

    JobFactory(organisation=owner.organisation)

    assert api_client.get(JOBS, **auth).json()["count"] == 1


def test_progress_written_by_a_worker_shows_at_once(api_client, auth, owner):
    """Workers write progress with QuerySet.update(), which sends no signal."""
    job = JobFactory(organisation=owner.organisation, status=JobStatus.PROCESSING)
    assert api_client.get(f"{JOBS}/{job.pk}", **auth).json()["progress"] == 0.0
    assert api_client.get(JOBS, **auth).json()["results"][0]["progress"] == 0.0

    TranscriptionJob.objects.filter(pk=job.pk).update(progress=42.5)

    assert api_client.get(f"{JOBS}/{job.pk}", **auth).json()["progress"] == 42.5
    assert api_client.get(JOBS, **auth).json()["results"][0]["progress"] == 42.5


def test_bulk_updates_invalidate_too(api_client, auth, owner):
    job = JobFactory(organisation=owner.organisation)
    api_client.get(f"{JOBS}/{job.pk}", **auth)

    job.status = JobStatus.FAILED
    TranscriptionJob.objects.bulk_update([job], ["status"])

    assert api_client.get(f"{JOBS}/{job.pk}", **auth).json()["status"] == "failed"


def test_a_cancel_through_the_api_shows_in_the_list(api_client, auth, owner):
    job = JobFactory(organisation=owner.organisation)
    assert api_client.get(JOBS, **auth).json()["results"][0]["status"] == "queued"

    assert api_client.post(f"{JOBS}/{job.pk}/cancel", **auth).status_code == 200

    assert api_client.get(JOBS, **auth).json()["results"][0]["status"] == "cancelled"


def test_a_deleted_job_disappears_at_once(api_client, auth, owner):
    job = CompletedJobFactory(organisation=owner.organisation)
    assert api_client.get(f"{JOBS}/{job.pk}", **auth).status_code == 200
    assert api_client.get(JOBS, **auth).json()["count"] == 1

    assert api_client.delete(f"{JOBS}/{job.pk}", **auth).status_code == 204

    assert api_client.get(f"{JOBS}/{job.pk}", **auth).status_code == 404
    assert api_client.get(JOBS, **auth).json()["count"] == 0


def test_changes_in_another_organisation_keep_this_ones_entries(api_client, auth, owner):
    JobFactory(organisation=owner.organisation)
    api_client.get(JOBS, **auth)

    JobFactory()  # another organisation

    with CaptureQueriesContext(connection) as queries:
        assert api_client.get(JOBS, **auth).json()["count"] == 1
    assert job_queries(queries) == []


def test_organisations_never_see_each_others_cached_jobs(api_client, auth, owner):
    job = JobFactory(organisation=owner.organisation)
    assert api_client.get(f"{JOBS}/{job.pk}", **auth).status_code == 200
    assert api_client.get(JOBS, **auth).json()["count"] == 1
    stranger = bearer(member(Role.OWNER).user)

    assert api_client.get(f"{JOBS}/{job.pk}", **stranger).status_code == 404
    assert api_client.get(JOBS, **stranger).json()["count"] == 0


def test_invalid_filters_and_missing_pages_are_not_cached(api_client, auth, owner):
    assert api_client.get(JOBS, {"status": "nope"}, **auth).status_code == 400
    assert api_client.get(JOBS, {"page": 9}, **auth).status_code == 404
    JobFactory.create_batch(26, organisation=owner.organisation)

    assert api_client.get(JOBS, {"page": 2}, **auth).status_code == 200


def test_a_new_report_appears_in_the_next_list(api_client, auth, owner):
    assert api_client.get("/api/v1/reports/", **auth).json()["count"] == 0

    Report.objects.create(
        organisation=owner.organisation, created_by=owner.user, kind="usage", format="csv"
    )

    assert api_client.get("/api/v1/reports/", **auth).json()["count"] == 1


def test_reads_work_with_the_cache_off(api_client, auth, owner, settings):
    settings.API_READ_CACHE_SECONDS = 0
    job = JobFactory(organisation=owner.organisation)

    api_client.get(JOBS, **auth)
    with CaptureQueriesContext(connection) as queries:
        assert api_client.get(f"{JOBS}/{job.pk}", **auth).status_code == 200
    assert job_queries(queries)
    assert not READ_CACHE.enabled


def test_a_transcript_deleted_after_the_job_lookup_is_a_404_not_a_500(db):
    import uuid

    from apps.audio_jobs import transcripts
    from apps.core.exceptions import NotFoundError

    with pytest.raises(NotFoundError):
        transcripts.transcript_render(job_id=uuid.uuid4(), fmt="txt")


def test_the_organisation_list_comes_from_the_authenticated_principal(api_client, auth, owner):
    api_client.get("/api/v1/organisations/", **auth)

    with CaptureQueriesContext(connection) as queries:
        response = api_client.get("/api/v1/organisations/", **auth)

    assert response.json()["results"][0]["id"] == str(owner.organisation.id)
    assert queries.captured_queries == []
