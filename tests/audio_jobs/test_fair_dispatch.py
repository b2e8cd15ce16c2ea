"""Fair use of the shared transcription queue: an organisation has at most its plan's
PLAN_ACTIVE_JOBS jobs published (on the queue or running) at once; the others wait, queued and
unpublished, and take a place when one of its jobs ends, highest priority then oldest first."""

from __future__ import annotations

import threading
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connections
from django.utils import timezone

from apps.accounts.models import Organisation
from apps.audio_jobs import processing, services
from apps.audio_jobs.models import JobPriority, JobStatus, TranscriptionJob
from tests.audio_jobs.factories import JobFactory
from tests.factories import OrganisationFactory


@pytest.fixture
def publish():
    with mock.patch("workers.transcription.transcribe_job.apply_async") as apply_async:
        yield apply_async


@pytest.fixture(autouse=True)
def two_places(settings):
    settings.PLAN_ACTIVE_JOBS = {"free": 2, "team": 5, "enterprise": 0}


def published_ids(publish) -> list[str]:
    return [c.kwargs["args"][0] for c in publish.call_args_list]


def waiting(organisation) -> list[TranscriptionJob]:
    return list(
        TranscriptionJob.objects.filter(
            organisation=organisation, status=JobStatus.QUEUED, dispatched_at__isnull=True
        )
    )


def queue_jobs(organisation, count: int, **fields) -> list[TranscriptionJob]:
    jobs = []
    for n in range(count):
        job = JobFactory(organisation=organisation, **fields)
        TranscriptionJob.objects.filter(pk=job.pk).update(
            created_at=timezone.now() - timedelta(minutes=10 - n)
        )
        jobs.append(job)
    return jobs


@pytest.mark.django_db
def test_only_the_plans_number_of_jobs_is_published_the_rest_wait(publish):
    organisation = OrganisationFactory(plan="free")
    jobs = queue_jobs(organisation, 4)

    published = [services.job_dispatch(job_id=job.pk) for job in jobs]

    assert published == [True, True, False, False]
    assert published_ids(publish) == [str(jobs[0].pk), str(jobs[1].pk)]
    assert {job.pk for job in waiting(organisation)} == {jobs[2].pk, jobs[3].pk}


@pytest.mark.django_db
def test_other_organisations_are_not_held_up_and_unlimited_plans_are_not_limited(publish):
    busy, other, unlimited = (
        OrganisationFactory(plan=plan) for plan in ("free", "team", "enterprise")
    )
    for job in queue_jobs(busy, 5):
        services.job_dispatch(job_id=job.pk)

    theirs = [services.job_dispatch(job_id=job.pk) for job in queue_jobs(other, 5)]
    large = [services.job_dispatch(job_id=job.pk) for job in queue_jobs(unlimited, 8)]

    assert theirs == [True] * 5 and large == [True] * 8
    assert len(waiting(busy)) == 3


@pytest.mark.django_db
def test_a_job_that_ends_gives_its_place_to_the_highest_priority_then_oldest_waiting_job(
    publish, django_capture_on_commit_callbacks
):
    organisation = OrganisationFactory(plan="free")
    first, second = queue_jobs(organisation, 2)
    for job in (first, second):
        services.job_dispatch(job_id=job.pk)
    older, newer = queue_jobs(organisation, 2)
    urgent = JobFactory(organisation=organisation, priority=JobPriority.HIGH)
    for job in (older, newer, urgent):
        services.job_dispatch(job_id=job.pk)
    publish.reset_mock()

    with django_capture_on_commit_callbacks(execute=True):
        processing._finish(TranscriptionJob.objects.get(pk=first.pk), JobStatus.COMPLETED)
    with django_capture_on_commit_callbacks(execute=True):
        services.job_cancel(job=TranscriptionJob.objects.get(pk=second.pk))

    assert published_ids(publish) == [str(urgent.pk), str(older.pk)]
    assert [job.pk for job in waiting(organisation)] == [newer.pk]


@pytest.mark.django_db
def test_the_sweeper_fills_each_organisations_places_and_republishes_lost_messages_in_place(
    publish, settings
):
    organisation = OrganisationFactory(plan="free")
    jobs = queue_jobs(organisation, 4)  # created 10 to 7 minutes ago, never published
    lost = queue_jobs(OrganisationFactory(plan="free"), 1)[0]
    TranscriptionJob.objects.filter(pk=lost.pk).update(
        dispatched_at=timezone.now() - timedelta(hours=2)  # its message may be lost
    )

    counts = services.jobs_redispatch_stale()

    assert (counts["published"], counts["republished"]) == (2, 1)
    assert set(published_ids(publish)) == {str(jobs[0].pk), str(jobs[1].pk), str(lost.pk)}
    assert len(waiting(organisation)) == 2
    # A republished message keeps its place; it takes no second one.
    assert services.jobs_published(lost.organisation_id).count() == 1


@pytest.mark.django_db
def test_a_publish_the_broker_refuses_gives_the_place_back(publish):
    organisation = OrganisationFactory(plan="free")
    job = queue_jobs(organisation, 1)[0]
    publish.side_effect = ConnectionError("broker down")

    assert services.job_dispatch(job_id=job.pk) is False

    job.refresh_from_db()
    assert job.dispatched_at is None  # the sweeper's "never published" again
    assert services.jobs_published(organisation.pk).count() == 0


@pytest.mark.django_db(transaction=True)
def test_dispatches_at_once_cannot_both_take_the_last_place(publish):
    organisation = OrganisationFactory(plan="free")
    running = JobFactory(organisation=organisation, status=JobStatus.PROCESSING)
    candidates = queue_jobs(organisation, 4)
    barrier = threading.Barrier(len(candidates))
    results: list[bool] = []

    def dispatch(job):
        try:
            barrier.wait(timeout=10)
            results.append(services.job_dispatch(job_id=job.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=dispatch, args=(job,)) for job in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == [False, False, False, True]
    # The running job holds one of the two places; one candidate got the other.
    assert services.jobs_published(organisation.pk).count() == 2
    assert TranscriptionJob.objects.get(pk=running.pk).status == JobStatus.PROCESSING


@pytest.mark.django_db
def test_unknown_plans_get_the_free_plans_places(publish):
    organisation = OrganisationFactory(plan="free")
    Organisation.objects.filter(pk=organisation.pk).update(plan="legacy")
    jobs = queue_jobs(organisation, 3)

    assert [services.job_dispatch(job_id=job.pk) for job in jobs] == [True, True, False]


@pytest.mark.django_db
def test_the_sweeper_skips_full_organisations_so_every_one_with_room_gets_its_turn(publish):
    """Full organisations waiting first in any order must not hide one with room behind them."""
    full = [OrganisationFactory(plan="free") for _ in range(3)]
    for organisation in full:
        for job in queue_jobs(organisation, 3):
            services.job_dispatch(job_id=job.pk)  # 2 published, 1 waiting
    idle = OrganisationFactory(plan="free")
    late = queue_jobs(idle, 1)[0]
    since = timezone.now() - timedelta(seconds=15)

    assert services._organisations_with_room(since, limit=1) == [idle.pk]
    publish.reset_mock()
    assert services.jobs_redispatch_stale()["published"] == 1
    assert published_ids(publish) == [str(late.pk)]


@pytest.mark.django_db
def test_a_requeued_abandoned_job_keeps_its_place(publish, settings):
    """Given back, the place could go to a waiting job, and the abandoned job's original message,
    restored by Redis later, would run it past the limit."""
    settings.JOB_HEARTBEAT_TIMEOUT_SECONDS = 60
    organisation = OrganisationFactory(plan="free")
    abandoned = JobFactory(
        organisation=organisation, status=JobStatus.PROCESSING, worker="gone:1", attempts=1
    )
    TranscriptionJob.objects.filter(pk=abandoned.pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5), dispatched_at=timezone.now()
    )
    other = JobFactory(organisation=organisation, status=JobStatus.PROCESSING)
    waiting_job = queue_jobs(organisation, 1)[0]

    counts = services.jobs_redispatch_stale()

    assert counts["requeued"] == 1
    assert published_ids(publish) == [str(abandoned.pk)]
    assert [job.pk for job in waiting(organisation)] == [waiting_job.pk]
    # The two it had: the requeued job (published again) and the other one, still running.
    assert set(services.jobs_published(organisation.pk).values_list("pk", flat=True)) == {
        abandoned.pk,
        other.pk,
    }


@pytest.mark.django_db
def test_without_a_limit_one_call_publishes_a_batch_not_the_whole_backlog(
    publish, settings, monkeypatch
):
    settings.PLAN_ACTIVE_JOBS = {"free": 0}
    monkeypatch.setattr(services, "WAITING_BATCH", 3)
    organisation = OrganisationFactory(plan="free")
    queue_jobs(organisation, 5)

    assert services.dispatch_waiting(organisation_id=organisation.pk) == 3
    assert len(waiting(organisation)) == 2
