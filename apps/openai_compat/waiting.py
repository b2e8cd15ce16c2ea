"""Waiting in a web request for a job to finish, bounded per process and in time.

A waiting request holds a gunicorn (gthread) thread, so a process lets at most
OPENAI_COMPAT_MAX_WAITING requests in at once (the slot is taken before the upload is read, so
uploads in progress count too) and answers the next one 503 with Retry-After: the server is
busy, the client's request was fine, and OpenAI SDKs retry a 503 after Retry-After.

The job is polled: one primary-key query of three columns, every 0.25 s at first and backing
off to 1 s (a short clip is answered quickly; a long one costs one query a second). The live
feed's Redis wake-up (`apps.feed.streams.Hub`) was not reused: it is an asyncio subscription
per event loop for ASGI streams, and a gthread worker has no loop; a subscriber thread per
process for at most a few waiting requests would add a Redis connection and a failure mode to
save a handful of indexed queries a second. Between polls the database connection goes back to
the pool, as the feed's streams do, so waiting requests do not hold DB_POOL_MAX_SIZE.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from apps.audio_jobs.models import FINAL_STATUSES
from apps.core.db import release_connection

from . import selectors
from .exceptions import JOB_ID_HEADER, NO_RETRY_HEADER, TranscriptionBusy, TranscriptionTimeout

POLL_FIRST_SECONDS = 0.25
POLL_MAX_SECONDS = 1.0
POLL_BACKOFF = 1.5
BUSY_RETRY_AFTER_SECONDS = 5


class WaitingSlots:
    """A per-process count of requests waiting, refused past a limit read on each take."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self.taken = 0

    def take(self) -> bool:
        with self._lock:
            if self.taken >= self._limit():
                return False
            self.taken += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.taken = max(0, self.taken - 1)


SLOTS = WaitingSlots(lambda: settings.OPENAI_COMPAT_MAX_WAITING)


@contextmanager
def waiting_slot() -> Iterator[None]:
    """Hold one of this process's waiting places, or raise 503 `transcription_busy`."""
    if not SLOTS.take():
        raise TranscriptionBusy(
            "This server is busy with other transcriptions; retry shortly.",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
        )
    try:
        yield
    finally:
        SLOTS.release()


def job_wait(
    *,
    organisation_id: Any,
    job_id: Any,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> selectors.JobState | None:
    """The job's final state (None: deleted meanwhile), polled until `timeout` seconds have
    passed; then 504 `transcription_timeout` naming the job, which goes on."""
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST_SECONDS
    while True:
        try:
            state = selectors.job_state(organisation_id=organisation_id, job_id=job_id)
        finally:
            release_connection()
        if state is None or state.status in FINAL_STATUSES:
            return state
        left = deadline - time.monotonic()
        if left <= 0:
            raise TranscriptionTimeout(
                f"The transcription did not finish within {int(timeout)} seconds. It goes on as "
                f"job {job_id}: fetch it with GET /api/v1/jobs/{job_id}.",
                details={"job_id": str(job_id)},
                headers={JOB_ID_HEADER: str(job_id), NO_RETRY_HEADER: "false"},
            )
        sleep(min(delay, left))
        delay = min(delay * POLL_BACKOFF, POLL_MAX_SECONDS)
