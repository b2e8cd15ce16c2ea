"""A failed transcription is dead-lettered even when its job cannot be marked failed; only a
delivery that held the job's lease fails the job, and a lease PostgreSQL refuses is retried."""

from __future__ import annotations

from unittest import mock

import psycopg
from celery.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError

from apps.audio_jobs import leases, processing
from apps.audio_jobs.models import JobStatus
from apps.core.models import DeadLetter
from tests.audio_jobs.factories import JobFactory
from workers.base import LexisTask
from workers.engines.base import TranscriptionResult
from workers.transcription import transcribe_job

TOO_MANY_CLIENTS = psycopg.OperationalError("FATAL: sorry, too many clients already")


def engine_bug(job, deadline):
    raise RuntimeError("engine bug")


def completes(job, deadline):
    result = TranscriptionResult(
        text="hi", language="en", language_probability=1.0, duration=1.0, segments=[]
    )
    return processing._complete(job, result, processing_seconds=1.0)


def refusing(times: int):
    """`psycopg.connect` as PostgreSQL at its connection limit: the first `times` connections are
    refused, the next ones made for real."""
    real = psycopg.connect
    calls: list[int] = []

    def connect(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise TOO_MANY_CLIENTS
        return real(*args, **kwargs)

    return connect


def test_the_dead_letter_is_written_when_marking_the_job_failed_raises(db, caplog):
    job = JobFactory(status=JobStatus.QUEUED)

    with (
        mock.patch.object(processing, "_run", engine_bug),
        mock.patch.object(
            processing, "job_fail_unexpectedly", side_effect=OperationalError("connection lost")
        ) as fail,
    ):
        result = transcribe_job.apply(args=[str(job.pk)])

    assert result.failed()
    fail.assert_called_once()
    letter = DeadLetter.objects.get()
    assert letter.task_name == "workers.transcription.transcribe_job"
    assert letter.args == [str(job.pk)]
    assert letter.exception_type == "builtins.RuntimeError"
    assert f"Job {job.pk} could not be marked failed" in caplog.text


def test_a_failed_transcription_marks_its_job_failed_and_is_dead_lettered(db):
    job = JobFactory(status=JobStatus.QUEUED)

    with mock.patch.object(processing, "_run", engine_bug):
        result = transcribe_job.apply(args=[str(job.pk)])

    assert result.failed()
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "internal_error")
    assert DeadLetter.objects.get().args == [str(job.pk)]


def test_a_lease_connection_postgresql_refuses_is_retried_and_the_job_completes(db):
    job = JobFactory(status=JobStatus.QUEUED)

    with (
        mock.patch.object(leases.psycopg, "connect", side_effect=refusing(2)),
        mock.patch.object(processing, "_run", completes),
    ):
        task = transcribe_job.apply(args=[str(job.pk)])

    assert task.successful() and task.get() == "completed"
    job.refresh_from_db()
    assert (job.status, job.error_code, job.attempts) == (JobStatus.COMPLETED, "", 1)
    assert DeadLetter.objects.count() == 0


def test_a_duplicate_that_never_got_the_lease_leaves_the_running_job_to_its_worker(db, caplog):
    job = JobFactory(status=JobStatus.PROCESSING)  # another worker is running it

    with mock.patch.object(leases.psycopg, "connect", side_effect=TOO_MANY_CLIENTS):
        task = transcribe_job.apply(args=[str(job.pk)])

    # Retried as often as any transient error, then dead-lettered; the job itself is untouched.
    assert task.failed()
    letter = DeadLetter.objects.get()
    assert letter.exception_type == "apps.audio_jobs.leases.LeaseUnavailable"
    assert letter.attempts == LexisTask.max_retries + 1
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.PROCESSING, "")
    assert f"Job {job.pk} left as it is" in caplog.text
    # The worker that runs it stores its transcript.
    assert completes(job, None) == "completed"


def test_a_time_limit_reached_before_the_lease_leaves_the_job_alone(db):
    job = JobFactory(status=JobStatus.PROCESSING)

    with mock.patch.object(leases.psycopg, "connect", side_effect=SoftTimeLimitExceeded()):
        task = transcribe_job.apply(args=[str(job.pk)])

    assert task.get() == "time_limit"
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.PROCESSING, "")


def test_a_time_limit_with_the_lease_held_fails_the_job(db):
    job = JobFactory(status=JobStatus.QUEUED)

    def too_long(job, deadline):
        raise processing.JobTimeLimitExceeded()

    with mock.patch.object(processing, "_run", too_long):
        task = transcribe_job.apply(args=[str(job.pk)])

    assert task.get() == "time_limit"
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "time_limit")
