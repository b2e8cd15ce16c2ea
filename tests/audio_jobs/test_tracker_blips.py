"""Progress and heartbeat writes and cancel-flag reads are best effort: one that the database
refuses is logged and the transcription goes on. Raised from the engine's callback it retried the
task, which transcribed the whole file again (an hour of audio for one lost heartbeat)."""

from __future__ import annotations

import uuid

import pytest
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import OperationalError, connection

from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from tests.audio_jobs.factories import JobFactory
from workers.transcription import transcribe_job

pytestmark = pytest.mark.django_db(transaction=True)

SPOKEN = "Please send the quarterly report to the finance team before Friday."


class TrackerStatementsFail:
    """A connection execute wrapper: the tracker's statements (the progress and heartbeat write,
    the cancel-flag read) fail as they do while PostgreSQL restarts; every other one runs."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        table = TranscriptionJob._meta.db_table
        progress_write = (
            sql.startswith("UPDATE") and '"heartbeat_at"' in sql and '"progress"' in sql
        )
        cancel_read = sql.startswith(f'SELECT "{table}"."cancel_requested" AS')
        if progress_write or cancel_read:
            self.refused.append("progress" if progress_write else "cancel")
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)


def test_a_database_outage_during_transcription_neither_stops_nor_restarts_it(speech, caplog):
    with speech.say(SPOKEN).open("rb") as handle:
        key = default_storage.save(f"test/{uuid.uuid4()}.wav", File(handle))
    job = JobFactory(status=JobStatus.QUEUED, audio_key=key, language="en")
    outage = TrackerStatementsFail()

    try:
        with connection.execute_wrapper(outage):
            task = transcribe_job.apply(args=[str(job.pk)])
    finally:
        default_storage.delete(key)

    assert task.get() == "completed"
    assert {"progress", "cancel"} <= set(outage.refused)
    job.refresh_from_db()
    # Claimed once: the real engine ran once, to the end.
    assert (job.status, job.attempts, job.progress) == (JobStatus.COMPLETED, 1, 100.0)
    assert "quarterly report" in job.transcript.text.lower()
    assert f"Job {job.pk}: could not write its progress and heartbeat" in caplog.text
    assert f"Job {job.pk}: could not read its cancel flag" in caplog.text


def test_after_a_refused_cancel_read_the_next_read_sees_the_cancel_request():
    job = JobFactory(status=JobStatus.PROCESSING)
    tracker = processing._Tracker(job)
    outage = TrackerStatementsFail()

    with connection.execute_wrapper(outage):
        assert tracker.cancelled() is False
        tracker.progress(30.0, 60.0)
    assert outage.refused == ["cancel", "progress"]

    # The database is back; the 2 s throttle is not what is tested here.
    TranscriptionJob.objects.filter(pk=job.pk).update(cancel_requested=True)
    tracker._last_read = tracker._last_write = 0.0
    assert tracker.cancelled() is True
    tracker.progress(45.0, 60.0)
    assert TranscriptionJob.objects.get(pk=job.pk).progress == 75.0


def test_a_deleted_job_still_stops_the_transcription():
    job = JobFactory(status=JobStatus.PROCESSING)
    tracker = processing._Tracker(job)
    TranscriptionJob.objects.filter(pk=job.pk).delete()

    with pytest.raises(processing.JobGone):
        tracker.progress(30.0, 60.0)
    with pytest.raises(processing.JobGone):
        tracker.cancelled()
