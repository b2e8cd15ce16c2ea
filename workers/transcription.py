"""Tasks of the transcription queues: thin entry points into apps.audio_jobs.processing.

The model is loaded once per worker process (workers.engines caches it) and shared by every job
that process runs. Time limits are set per job when it is published (scaled by its duration).
"""

from __future__ import annotations

import logging
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from apps.audio_jobs import processing

from .base import LexisTask

logger = logging.getLogger(__name__)


class TranscriptionTask(LexisTask):
    """Fails the job when its message fails for good, but only from a delivery that held the
    job's lease: a duplicate delivery that never got it (PostgreSQL refused the lease connection
    until its retries ran out) knows nothing of the job, which another worker may be running. Such
    a job is left as it is: queued, the stale-queue sweeper publishes it again; processing, its
    worker finishes it, or the stuck-job sweeper requeues it once its heartbeat stops.

    When it is unknown whether the delivery held the lease (a hard time limit: the pool's parent
    process calls this, without the killed delivery's request), the job is failed as before."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id = (args or [None])[0] or (kwargs or {}).get("job_id")
        if job_id and held_lease(self.request) is False:
            logger.warning(
                "Job %s left as it is: this delivery failed before it held the job's lease",
                job_id,
            )
        elif job_id:
            try:
                processing.job_fail_unexpectedly(
                    job_id=job_id,
                    code="internal_error",
                    message="The transcription failed because of an internal error; it has been "
                    "reported and can be retried by an operator.",
                )
            except Exception:
                # The dead letter below must still be written (it falls back to its queue when
                # the database is down); the stuck-job sweeper requeues the job itself later.
                logger.exception("Job %s could not be marked failed", job_id)
        super().on_failure(exc, task_id, args, kwargs, einfo)


@shared_task(name="workers.transcription.transcribe_job", base=TranscriptionTask, bind=True)
def transcribe_job(self, job_id: str) -> str:
    request = self.request
    request.held_lease = False

    def leased() -> None:
        request.held_lease = True

    try:
        deadline = _deadline(request, self.app.conf.task_soft_time_limit)
        outcome = processing.job_process(
            job_id=job_id, retries=request.retries or 0, deadline=deadline, on_lease=leased
        )
    except (SoftTimeLimitExceeded, processing.JobTimeLimitExceeded):
        if held_lease(request) is False:
            # Stopped while still waiting for the lease: the job is not this delivery's to fail.
            logger.warning("Job %s: time limit reached before the lease was taken", job_id)
            return "time_limit"
        processing.job_fail_unexpectedly(
            job_id=job_id,
            code="time_limit",
            message="The transcription took longer than this file's time limit and was stopped.",
        )
        return "time_limit"
    logger.info("Transcription job %s: %s", job_id, outcome)
    return outcome


def held_lease(request) -> bool | None:
    """Whether this delivery (the task's request) took the job's lease; None when the request is
    not the delivery's own (`transcribe_job` never ran with it)."""
    return getattr(request, "held_lease", None)


def _deadline(request, default_soft: float | None) -> float | None:
    """When the job's soft time limit passes, as a `time.monotonic()` value.

    The prefork pool enforces it with a signal; the thread pool (GPU workers batching many jobs
    in one process) enforces nothing, so the job checks this deadline itself between windows.
    """
    limits = getattr(request, "timelimit", None) or (None, None)
    soft = limits[1] if len(limits) > 1 else None
    soft = soft or limits[0] or default_soft
    return time.monotonic() + float(soft) if soft else None
