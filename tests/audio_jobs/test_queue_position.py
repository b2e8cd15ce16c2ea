"""`GET /api/v1/jobs/<id>/queue`: where a queued job stands under fair dispatch (waiting for one
of its organisation's places, or on the shared queue), read live, with a rough start estimate;
real dispatch on PostgreSQL, the broker's publish replaced."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs import services
from apps.audio_jobs.models import JobPriority, JobStatus, TranscriptionJob
from tests.audio_jobs.factories import JobFactory
from tests.factories import OrganisationFactory, bearer, member

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def publish(settings):
    settings.PLAN_ACTIVE_JOBS = {"free": 2, "team": 5, "enterprise": 0}
    with mock.patch("workers.transcription.transcribe_job.apply_async") as apply_async:
        yield apply_async


def queued(organisation, count: int, *, minutes_ago: int = 10, **fields) -> list:
    """`count` jobs created a minute apart, oldest first, each dispatched as the API does."""
    jobs = []
    for n in range(count):
        job = JobFactory(organisation=organisation, **fields)
        TranscriptionJob.objects.filter(pk=job.pk).update(
            created_at=timezone.now() - timedelta(minutes=minutes_ago - n)
        )
        services.job_dispatch(job_id=job.pk)
        job.refresh_from_db()
        jobs.append(job)
    return jobs


def queue_of(client, headers, job) -> dict:
    response = client.get(f"/api/v1/jobs/{job.pk}/queue", **headers)
    assert response.status_code == 200, response.content
    return response.json()


def test_a_job_past_its_organisations_places_waits_behind_its_own_jobs_only(client):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    first, second, third, fourth = queued(owner.organisation, 4)
    urgent = queued(owner.organisation, 1, minutes_ago=1, priority=JobPriority.HIGH)[0]
    queued(OrganisationFactory(plan="enterprise"), 3)  # another organisation's: not ahead here

    answers = [queue_of(client, headers, job) for job in (first, third, fourth, urgent)]

    assert [a["state"] for a in answers] == ["on_queue", "waiting", "waiting", "waiting"]
    # The urgent job gets the next place, then the oldest waiting ones.
    assert [a["waiting_ahead"] for a in answers[1:]] == [1, 2, 0]
    assert answers[1]["queued_ahead"] is None and answers[1]["estimated_start_seconds"] is None
    assert answers[1]["organisation_active_jobs"] == 2
    assert answers[1]["organisation_active_jobs_limit"] == 2
    second.refresh_from_db()
    assert second.dispatched_at is not None  # it holds the other place


def test_a_published_job_counts_every_organisations_jobs_served_before_it(client):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    other = OrganisationFactory(plan="enterprise")
    earlier = queued(other, 2)  # published before ours, same priority
    ours = queued(owner.organisation, 1, minutes_ago=5)[0]
    queued(other, 1, minutes_ago=4, priority=JobPriority.HIGH)  # later, but served first
    queued(other, 2, minutes_ago=3, priority=JobPriority.LOW)  # later and lower: behind us

    answer = queue_of(client, headers, ours)

    assert answer["state"] == "on_queue" and answer["queued_ahead"] == 3
    assert answer["estimated_start_seconds"] is None  # nothing running: no rate to go by
    assert "running_now" not in answer  # the platform's load is not shown
    assert [job.dispatched_at is not None for job in earlier] == [True, True]


def test_the_estimate_shares_the_jobs_ahead_among_the_running_ones(client):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    other = OrganisationFactory(plan="enterprise")
    for seconds in (20.0, 40.0):  # the organisation's jobs took 30 s on average
        JobFactory(
            organisation=owner.organisation, status=JobStatus.COMPLETED, processing_seconds=seconds
        )
    JobFactory(organisation=owner.organisation, status=JobStatus.COMPLETED, processing_seconds=None)
    JobFactory(organisation=other, status=JobStatus.PROCESSING)
    JobFactory(organisation=other, status=JobStatus.PROCESSING)
    queued(other, 3)
    ours = queued(owner.organisation, 1, minutes_ago=5)[0]

    answer = queue_of(client, headers, ours)

    assert answer["queued_ahead"] == 3
    # 3 ahead x 30 s / 2 running, plus half a job for a place to free (a job with no time
    # recorded is left out of the mean).
    assert answer["estimated_start_seconds"] == 60


def test_a_long_queue_is_shown_in_tens_past_ten(client):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    queued(OrganisationFactory(plan="enterprise"), 17)
    ours = queued(owner.organisation, 1, minutes_ago=1)[0]

    assert queue_of(client, headers, ours)["queued_ahead"] == 10


def test_waiting_jobs_created_at_the_same_moment_are_ordered_by_id(client):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    queued(owner.organisation, 2)  # the two places
    twins = queued(owner.organisation, 2)
    moment = timezone.now() - timedelta(minutes=30)
    TranscriptionJob.objects.filter(pk__in=[t.pk for t in twins]).update(created_at=moment)
    first, second = sorted(twins, key=lambda job: job.pk)

    assert [queue_of(client, headers, job)["waiting_ahead"] for job in (first, second)] == [0, 1]


def test_running_and_ended_jobs_have_nothing_ahead_and_the_link_shows_while_queued(client):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    running = JobFactory(organisation=owner.organisation, status=JobStatus.PROCESSING)
    done = JobFactory(organisation=owner.organisation, status=JobStatus.COMPLETED)
    waiting = queued(owner.organisation, 1)[0]

    states = [queue_of(client, headers, job)["state"] for job in (running, done)]
    links = [
        client.get(f"/api/v1/jobs/{job.pk}", **headers).json()["links"] for job in (waiting, done)
    ]

    assert states == ["running", "ended"]
    assert links[0]["queue"] == f"/api/v1/jobs/{waiting.pk}/queue"
    assert "queue" not in links[1]


def test_another_organisations_job_is_404(client):
    owner = member(Role.OWNER)
    theirs = queued(OrganisationFactory(), 1)[0]

    response = client.get(
        f"/api/v1/jobs/{theirs.pk}/queue", **bearer(owner.user, owner.organisation)
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_the_answer_is_read_live_not_from_the_cache(client):
    from apps.audio_jobs.models import READ_CACHE

    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    first, _second, third = queued(owner.organisation, 3)

    with mock.patch.object(READ_CACHE, "get_or_load", side_effect=AssertionError) as cache:
        before = queue_of(client, headers, third)
        TranscriptionJob.objects.filter(pk=first.pk).update(status=JobStatus.COMPLETED)
        services.dispatch_waiting(organisation_id=owner.organisation.pk)
        after = queue_of(client, headers, third)

    assert before["state"] == "waiting" and after["state"] == "on_queue"
    cache.assert_not_called()
