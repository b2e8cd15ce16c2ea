"""Operations: queue inspection, stuck-job requeue and retention cleanup.

Used by the management commands (`queues`, `requeue_stuck_jobs`), the maintenance tasks in
workers/maintenance.py and the scrape-time gauges in apps/core/metrics.py.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from .tempfiles import sweep_temp_dir

logger = logging.getLogger(__name__)

# kombu's Redis transport keeps one list per queue and priority step: "<queue>" for priority 0
# and "<queue>\x06\x16<step>" for the others; messages are LPUSHed and BRPOPed, so the oldest
# waiting message is at index -1. Delivered, unacknowledged messages sit in the "unacked" hash.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"


@dataclass
class QueueRow:
    queue: str
    depth: int
    oldest_age_seconds: float | None  # None: empty, or the oldest message has no publish time


@dataclass
class QueueStats:
    queues: list[QueueRow] = field(default_factory=list)
    unacked: int = 0


def _broker_client(url: str | None = None):
    import redis

    url = url or settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        return None
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def _published_at(raw: bytes | None) -> float | None:
    """The publish time stamped into a message's headers by lexiscore/celery.py."""
    if not raw:
        return None
    try:
        message = json.loads(raw)
        value = (message.get("headers") or {}).get("published_at")
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


def queue_stats(*, broker_url: str | None = None, now: float | None = None) -> QueueStats | None:
    """Depth and oldest-message age of every platform queue, read from Redis (None: not Redis)."""
    from workers.queues import Queue

    client = _broker_client(broker_url)
    if client is None:
        return None
    now = time.time() if now is None else now
    stats = QueueStats()
    with client:
        for queue in Queue:
            keys = [
                str(queue) if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}"
                for step in PRIORITY_STEPS
            ]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
                pipe.lindex(key, -1)
            results = pipe.execute()
            depth = sum(results[0::2])
            stamps = [t for raw in results[1::2] if (t := _published_at(raw)) is not None]
            age = max(0.0, now - min(stamps)) if stamps else None
            stats.queues.append(QueueRow(str(queue), depth, age))
        stats.unacked = int(client.hlen(UNACKED_KEY))
    return stats


# ---- stuck jobs --------------------------------------------------------------------------------
def stuck_jobs(*, now=None):
    """Processing jobs whose worker stopped beating, or which ran past their hard time limit."""
    from django.db.models import Q

    from apps.audio_jobs.models import JobStatus, TranscriptionJob
    from apps.audio_jobs.services import job_time_limits

    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT_SECONDS)
    candidates = TranscriptionJob.objects.filter(status=JobStatus.PROCESSING).filter(
        Q(heartbeat_at__lt=stale)
        | Q(heartbeat_at__isnull=True, started_at__lt=stale)
        | Q(started_at__lt=now - timedelta(seconds=settings.CELERY_MAX_TASK_TIME_LIMIT))
    )
    overdue = []
    for job in TranscriptionJob.objects.filter(
        status=JobStatus.PROCESSING, started_at__isnull=False
    ):
        _soft, hard = job_time_limits(job)
        # Grace for the worker to record the timeout itself before we call it stuck.
        if job.started_at < now - timedelta(seconds=hard + 120):
            overdue.append(job.pk)
    return TranscriptionJob.objects.filter(Q(pk__in=candidates.values("pk")) | Q(pk__in=overdue))


def jobs_requeue_stuck(*, dry_run: bool = False) -> dict[str, list[str]]:
    """Put stuck jobs back on their queue, unless a live worker still holds the job's lease.

    The per-job delivery cap (JOB_MAX_DELIVERIES, counted in PostgreSQL) still applies when the
    requeued message starts, so a job that keeps killing its worker ends FAILED, not in a loop.
    """
    from apps.audio_jobs.leases import JobLease
    from apps.audio_jobs.services import job_dispatch, job_requeue_abandoned

    result: dict[str, list[str]] = {"requeued": [], "held": []}
    for job_id in list(stuck_jobs().values_list("pk", flat=True)[:1000]):
        lease = JobLease(str(job_id))
        if not lease.acquire():
            result["held"].append(str(job_id))
            continue
        try:
            if dry_run:
                result["requeued"].append(str(job_id))
                continue
            updated = job_requeue_abandoned(job_id=job_id)
        finally:
            lease.release()
        if updated:
            result["requeued"].append(str(job_id))
            job_dispatch(job_id=job_id, again=True)  # in the place it kept
            logger.warning("Requeued stuck job %s", job_id, extra={"job_id": str(job_id)})
    return result


# ---- retention ---------------------------------------------------------------------------------
def temp_files_cleanup(*, older_than_seconds: int | None = None) -> int:
    """Delete this process's temp folder's platform files left behind by killed processes."""
    age = (
        older_than_seconds if older_than_seconds is not None else settings.TEMP_FILE_MAX_AGE_SECONDS
    )
    return sweep_temp_dir(Path(settings.FILE_UPLOAD_TEMP_DIR or tempfile.gettempdir()), age)


# One run's time for audio retention (hourly, beside the retention task's other sweeps).
AUDIO_RETENTION_BUDGET_SECONDS = 90.0


def audio_retention_cleanup(
    *, days: int | None = None, now=None, budget_seconds: float = AUDIO_RETENTION_BUDGET_SECONDS
) -> int:
    """Delete stored audio of finished jobs older than AUDIO_RETENTION_DAYS; clear `audio_key`.

    An organisation may keep audio shorter (`Organisation.audio_retention_days`; with a platform
    value of 0, "forever", its own applies). Jobs under legal hold are skipped (re-checked under
    each job's lock). Transcripts stay; only the audio goes. 0 days keeps audio forever.
    `audio_key` is cleared only once the storage confirmed the delete: a job whose delete failed
    keeps its key and is tried again by the next hourly run (the job row is the durable record,
    so no PendingDeletion row is needed). Each job is locked while its file is deleted, so an
    operator's retry of a failed job cannot start on audio that is being deleted.
    """
    from apps.accounts.models import Organisation
    from apps.audio_jobs.models import FINAL_STATUSES, TranscriptionJob

    days = settings.AUDIO_RETENTION_DAYS if days is None else days
    now = now or timezone.now()
    # A job under legal hold keeps its audio (apps/audio_jobs/holds.py).
    candidates = TranscriptionJob.objects.filter(
        status__in=FINAL_STATUSES, legal_hold_at__isnull=True
    ).exclude(audio_key="")
    shorter = dict(
        Organisation.objects.filter(audio_retention_days__isnull=False).values_list(
            "pk", "audio_retention_days"
        )
    )
    scopes = []
    if days > 0:
        scopes.append(
            candidates.exclude(organisation_id__in=list(shorter)).filter(
                finished_at__lt=now - timedelta(days=days)
            )
        )
    for organisation_id, own in shorter.items():
        effective = min(int(own or days), days) if days > 0 else int(own or 0)
        scopes.append(
            candidates.filter(
                organisation_id=organisation_id, finished_at__lt=now - timedelta(days=effective)
            )
        )
    deleted = failed = 0
    deadline = time.monotonic() + budget_seconds
    # Organisations' own scopes take turns at going first (one backlog cannot starve the rest).
    turn = int(now.timestamp() // 3600) % max(len(scopes), 1)
    for expired in scopes[turn:] + scopes[:turn]:
        done, errors = _delete_expired_audio(expired, deadline)
        deleted, failed = deleted + done, failed + errors
        if time.monotonic() > deadline:
            logger.info("Audio retention: out of time; the next run goes on")
            break
    if deleted:
        logger.info("Audio retention: deleted the audio of %d jobs", deleted)
    if failed:
        from .metrics import STORAGE_DELETE_FAILURES

        STORAGE_DELETE_FAILURES.labels("retention").inc(failed)
        logger.error(
            "Audio retention: %d audio file(s) could not be deleted; they are kept and retried",
            failed,
        )
    return deleted


def _delete_expired_audio(expired, deadline: float) -> tuple[int, int]:
    """Delete the audio of up to 5000 of `expired`'s jobs, until the deadline (at least one):
    (deleted, failed)."""
    from django.db import transaction

    from .metrics import RETENTION_DELETIONS
    from .storage import storage_delete

    deleted = failed = 0
    for job_id, key in expired.values_list("pk", "audio_key")[:5000]:
        with transaction.atomic():
            # Re-checked under the lock: retried, deleted, held or given new audio meanwhile.
            locked = (
                expired.filter(pk=job_id, audio_key=key).select_for_update(skip_locked=True).first()
            )
            if locked is None:
                continue
            error = storage_delete(key)
            if error is not None:
                failed += 1
                logger.warning(
                    "Audio retention: could not delete %s of job %s (kept; retried next run): %s",
                    key,
                    job_id,
                    error,
                    extra={"job_id": str(job_id), "storage_key": key},
                )
                continue
            # A save, not an update: the job's history records when its audio went.
            locked.audio_key = ""
            locked.save(update_fields=["audio_key", "updated_at"])
            deleted += 1
        RETENTION_DELETIONS.labels("audio").inc()  # committed: counted even if the run stops
        if time.monotonic() > deadline:
            break
    return deleted, failed
