"""A job lease: proof that exactly one live worker is processing a job.

On PostgreSQL the lease is a session-level advisory lock held on a dedicated connection for the
whole transcription. If the worker dies (SIGKILL, OOM, lost node) its connection closes and
PostgreSQL releases the lock at once, so the redelivered message can take the job over; while
the worker lives, a duplicate delivery fails to take the lock and is dropped. No long transaction
stays open. SQLite (the embedded single-machine mode, one worker) has no advisory locks: there the
lease always succeeds, and the job's status check guards re-runs.
"""

from __future__ import annotations

import hashlib
import logging

import psycopg
from django.db import connection

logger = logging.getLogger(__name__)


def lock_key(job_id: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, derived from the job id."""
    digest = hashlib.blake2b(f"lexiscore-job:{job_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class JobLease:
    def __init__(self, job_id: str) -> None:
        self.job_id = str(job_id)
        self.key = lock_key(self.job_id)
        self._conn: psycopg.Connection | None = None

    def acquire(self) -> bool:
        if connection.vendor != "postgresql":
            return True
        params = connection.get_connection_params()
        params["autocommit"] = True
        # Told apart from pooled connections in pg_stat_activity: it stays idle for a whole job.
        params["application_name"] = f"{params.get('application_name') or 'lexiscore'}-lease"
        self._conn = psycopg.connect(**params)
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()
        if row and row[0]:
            return True
        self._conn.close()
        self._conn = None
        return False

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        except psycopg.Error:
            logger.warning("Could not release the lease of job %s cleanly", self.job_id)
        finally:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
