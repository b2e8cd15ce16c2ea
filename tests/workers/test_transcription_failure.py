"""A failed transcription is dead-lettered even when its job cannot be marked failed."""

from __future__ import annotations

from unittest import mock

from django.db import OperationalError

from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus
from apps.core.models import DeadLetter
from tests.audio_jobs.factories import JobFactory
from workers.transcription import transcribe_job


def test_the_dead_letter_is_written_when_marking_the_job_failed_raises(db, caplog):
    job = JobFactory(status=JobStatus.PROCESSING)

    with (
        mock.patch.object(processing, "job_process", side_effect=RuntimeError("engine bug")),
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
    job = JobFactory(status=JobStatus.PROCESSING)

    with mock.patch.object(processing, "job_process", side_effect=RuntimeError("engine bug")):
        result = transcribe_job.apply(args=[str(job.pk)])

    assert result.failed()
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "internal_error")
    assert DeadLetter.objects.get().args == [str(job.pk)]
