"""A job lease: proof that exactly one live worker is processing a job.

On PostgreSQL the lease is a session-level advisory lock held on a dedicated connection for the
whole transcription. If the worker dies (SIGKILL, OOM, lost node) its connection closes and
PostgreSQL releases the lock at once, so the redelivered message can take the job over; while
the worker lives, a duplicate delivery fails to take the lock and is dropped. No long transaction
stays open. SQLite (the embedded single-machine mode, one worker) has no advisory locks: there the
lease always succeeds, and the job's status check guards re-runs.

A lease that cannot be asked for (PostgreSQL refuses the connection: too many clients, starting
up, unreachable) raises `LeaseUnavailable`, a `TransientError`: the delivery is retried later and
the job is left as it is, never failed for it (another worker may be running it).
"""

from __future__ import annotations

import hashlib
import logging

import psycopg
from django.db import connection

from workers.base import TransientError

logger = logging.getLogger(__name__)


def lock_key(job_id: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, derived from the job id."""
    digest = hashlib.blake2b(f"lexiscore-job:{job_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LeaseUnavailable(TransientError):
    """PostgreSQL could not be asked for the lease; whether another worker holds it is unknown."""


class JobLease:
    def __init__(self, job_id: str) -> None:
        self.job_id = str(job_id)
        self.key = lock_key(self.job_id)
        self._conn: psycopg.Connection | None = None

    def acquire(self) -> bool:
        """Take the job's lock: True when taken, False when another live session holds it.

        Raises `LeaseUnavailable` when PostgreSQL cannot be asked (psycopg's own
        OperationalError, which Django's wrappers never see, so the task's retry list would not
        know it). A connection opened before the failure is closed, not leaked.
        """
        if connection.vendor != "postgresql":
            return True
        params = connection.get_connection_params()
        params["autocommit"] = True
        # Told apart from pooled connections in pg_stat_activity: it stays idle for a whole job.
        params["application_name"] = f"{params.get('application_name') or 'lexiscore'}-lease"
        conn: psycopg.Connection | None = None
        try:
            conn = psycopg.connect(**params)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()
        except psycopg.OperationalError as exc:
            if conn is not None:
                conn.close()
            raise LeaseUnavailable(
                f"Could not ask PostgreSQL for the lease of job {self.job_id}: {exc}"
            ) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if row and row[0]:
            self._conn = conn
            return True
        conn.close()
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
