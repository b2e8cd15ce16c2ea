"""The poison-message cap counts only deliveries that were interrupted (the worker died).

Deliveries that got back to the worker's code (a result, a failure, a deliberate retry) are
counted in `deliveries_ended`; attempts minus that is what the cap holds against the job.
"""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.db import OperationalError
from django.utils import timezone

from apps.audio_jobs import processing, services
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.core.models import DeadLetter
from tests.audio_jobs.factories import JobFactory
from workers.base import TransientError


@pytest.fixture
def publish():
    with mock.patch("workers.transcription.transcribe_job.apply_async") as apply_async:
        yield apply_async


def test_retries_then_a_sweeper_requeue_do_not_fail_a_healthy_job(
    db, settings, publish, django_capture_on_commit_callbacks
):
    settings.JOB_MAX_DELIVERIES = 3
    settings.JOB_HEARTBEAT_TIMEOUT_SECONDS = 60
    job = JobFactory(status=JobStatus.QUEUED)
    # Delivery 1 and its two autoretries each raise a transient error back to Celery.
    with mock.patch.object(processing, "_run", side_effect=TransientError("peer timed out")):
        for retries in (0, 1, 2):
            with pytest.raises(TransientError):
                processing.job_process(job_id=str(job.pk), retries=retries)
    # The next retry waits (countdown, busy worker) holding no lease; the heartbeat goes stale
    # and the sweeper requeues the job with a new message (retries=0).
    TranscriptionJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert services.jobs_redispatch_stale()["requeued"] == 1

    with mock.patch.object(processing, "_run", return_value="completed") as run:
        outcome = processing.job_process(job_id=str(job.pk), retries=0)

    assert outcome == "completed"
    run.assert_called_once()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.deliveries_ended) == (JobStatus.PROCESSING, 4, 4)
    assert job.error_code == ""
    assert DeadLetter.objects.count() == 0


def test_deliveries_that_killed_their_worker_still_fail_the_job_as_poison(
    db, settings, django_capture_on_commit_callbacks
):
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(status=JobStatus.QUEUED)
    # Three deliveries claim the job and die before getting back (nothing counts them ended);
    # the first was followed by a deliberate retry that also died.
    for retries in (0, 1, 0):
        outcome, _ = processing._claim(str(job.pk), retries)
        assert outcome == "claimed"

    with django_capture_on_commit_callbacks(execute=True):
        outcome, claimed = processing._claim(str(job.pk), 0)

    assert (outcome, claimed) == ("poison", None)
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "too_many_attempts")
    assert "interrupted 3 times" in job.error_message
    assert job.attempts == 4  # the poison claim is counted too (it used to be left unsaved)
    assert DeadLetter.objects.get().attempts == 3


def test_a_mix_of_ended_and_interrupted_deliveries_counts_only_the_interrupted(db, settings):
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(status=JobStatus.PROCESSING, attempts=5, deliveries_ended=3)

    outcome, claimed = processing._claim(str(job.pk), 0)

    assert outcome == "claimed"
    assert (claimed.attempts, claimed.deliveries_ended) == (6, 3)


@pytest.mark.parametrize(("retries", "outcome"), [(2, "claimed"), (0, "poison")])
def test_the_message_retry_count_covers_retries_whose_end_was_not_written(
    db, settings, retries, outcome
):
    # Four deliveries, none counted ended (the database was the transient error): a message
    # retried twice proves two of them got back to the worker.
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(status=JobStatus.PROCESSING, attempts=4, deliveries_ended=0)

    assert processing._claim(str(job.pk), retries)[0] == outcome


def test_an_operator_reset_of_attempts_resets_the_ended_count_too(db, settings):
    # A retried failed job gets attempts=0 (a fresh budget); its old ended count must not
    # lift the cap for the new run.
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(status=JobStatus.QUEUED, attempts=0, deliveries_ended=5)
    for _ in range(3):
        assert processing._claim(str(job.pk), 0)[0] == "claimed"

    outcome, _ = processing._claim(str(job.pk), 0)

    assert outcome == "poison"


def test_an_error_counting_the_ended_delivery_does_not_mask_its_outcome(db, caplog):
    job = JobFactory(status=JobStatus.QUEUED)

    with (
        mock.patch.object(processing, "_run", return_value="completed"),
        mock.patch.object(
            processing, "release_connection", side_effect=OperationalError("connection lost")
        ),
    ):
        outcome = processing.job_process(job_id=str(job.pk))

    assert outcome == "completed"
    assert "could not count the ended delivery" in caplog.text
