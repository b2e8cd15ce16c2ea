"""What the workers' and sweepers' changes announce on the live feed (from the feed's review)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.audio_jobs.processing import _Tracker
from apps.core.maintenance import jobs_requeue_stuck
from apps.feed.models import FeedEvent
from tests.audio_jobs.factories import JobFactory

pytestmark = pytest.mark.django_db(transaction=True)


def announced(job) -> list[tuple[str, dict]]:
    return [(e.type, e.data) for e in FeedEvent.objects.filter(subject_id=job.pk).order_by("id")]


def test_a_stuck_job_put_back_in_the_queue_is_announced_as_queued():
    long_ago = timezone.now() - timedelta(hours=2)
    job = JobFactory(status=JobStatus.PROCESSING, started_at=long_ago, heartbeat_at=long_ago)

    result = jobs_requeue_stuck()

    assert result["requeued"] == [str(job.pk)]
    assert [(t, d["status"]) for t, d in announced(job)] == [("job.queued", "queued")]


def test_a_losing_duplicate_worker_neither_moves_a_finished_jobs_progress_nor_announces_it():
    job = JobFactory(status=JobStatus.COMPLETED, progress=100.0)

    _Tracker(job).progress(50.0, 100.0)  # no JobGone: the job exists, another worker finished it

    job.refresh_from_db()
    assert job.progress == 100.0
    assert announced(job) == []


def test_progress_is_announced_once_per_step_reached():
    job = JobFactory(status=JobStatus.PROCESSING, started_at=timezone.now())
    tracker = _Tracker(job)

    for done in (5.0, 12.0, 14.0, 47.0, 100.0):
        tracker._last_write = 0.0  # every call writes (the tracker writes at most every 2 s)
        tracker.progress(done, 100.0)

    progress = [d["progress"] for t, d in announced(job) if t == "job.progress"]
    assert progress == [12.0, 47.0, 99.9]
    assert TranscriptionJob.objects.get(pk=job.pk).progress == 99.9
