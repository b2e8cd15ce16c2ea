"""Routine tasks on the maintenance queue."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task, signals

from .base import LexisTask

logger = logging.getLogger(__name__)


@shared_task(name="workers.maintenance.ping", base=LexisTask, max_retries=0)
def ping() -> str:
    """A canary: proves a worker consumes the maintenance queue."""
    return "pong"


@shared_task(name="workers.maintenance.redispatch_stale_jobs", base=LexisTask)
def redispatch_stale_jobs() -> dict[str, int]:
    """Publish queued jobs whose message was never sent or may be lost; requeue abandoned ones."""
    from apps.audio_jobs.services import jobs_redispatch_stale

    return jobs_redispatch_stale()


@shared_task(name="workers.maintenance.flush_expired_tokens", base=LexisTask)
def flush_expired_tokens() -> int:
    """Delete expired outstanding/blacklisted JWTs (simplejwt's flushexpiredtokens), daily."""
    from apps.accounts.services import tokens_flush_expired

    return tokens_flush_expired()


class BackupTask(LexisTask):
    """A backup runs for hours, not under Celery's default limits (CELERY_DEFAULT_TIME_LIMIT,
    10 min): its time limits are `apps.core.backups.backup_time_limits()`, read from the settings
    when asked for. Beat's `apply_async` puts them (from its settings) in the message; a message
    without limits (`send_task`, `dead_letters requeue`) gets the worker's, read when it starts.
    The `time_limit` remote-control command can still set others on a running worker."""

    abstract = True

    @property
    def soft_time_limit(self) -> int:
        from apps.core.backups import backup_time_limits

        return self.__dict__.get("_soft_time_limit") or backup_time_limits()[0]

    @soft_time_limit.setter
    def soft_time_limit(self, value: int | None) -> None:
        self.__dict__["_soft_time_limit"] = value

    @property
    def time_limit(self) -> int:
        from apps.core.backups import backup_time_limits

        return self.__dict__.get("_time_limit") or backup_time_limits()[1]

    @time_limit.setter
    def time_limit(self, value: int | None) -> None:
        self.__dict__["_time_limit"] = value


@shared_task(name="workers.maintenance.backup_database", base=BackupTask, max_retries=2)
def backup_database() -> str:
    """Daily (beat): dump the database with its manifest, then keep the newest BACKUP_KEEP.

    Its soft time limit raises inside `backup_create`, which kills pg_dump and deletes the
    half-written folder; a hard-killed backup's folder is deleted when the next one starts.
    """
    from apps.core.backups import (
        BackupUploadError,
        backup_create,
        backups_prune,
        partials_remove_stale,
    )

    # First: what killed backups left goes even if this one fails too (night after night, their
    # folders would fill the disk, and then every backup would fail for want of space).
    try:
        partials_remove_stale()
    except OSError:  # one that cannot be deleted (another user's) must not stop the backup
        logger.exception("Could not delete what killed backups left in BACKUP_DIR")
    try:
        path = backup_create()
    except BackupUploadError:
        # The local backup is complete but its copy to storage failed: prune the local ones as
        # after any backup (a storage outage must not fill the disk), leave the copies in storage
        # (the newest is not among them), and fail the task for the alerts. Not a transient
        # error: a retry would write a whole new backup.
        backups_prune(storage=False)
        raise
    backups_prune()
    return path.name


@shared_task(name="workers.maintenance.retention_cleanup", base=LexisTask)
def retention_cleanup() -> dict[str, int]:
    """Hourly (beat): delete stale temp files, audio past AUDIO_RETENTION_DAYS (or an
    organisation's shorter retention), jobs past their organisation's job retention, abandoned
    presigned uploads and data exports past EXPORT_RETENTION_DAYS, then retry the stored-file
    deletes that failed before (apps.core.storage).
    """
    from apps.audio_jobs.retention import jobs_retention_cleanup
    from apps.audio_jobs.services import uploads_delete_abandoned
    from apps.core.maintenance import audio_retention_cleanup, temp_files_cleanup
    from apps.core.storage import pending_deletions_sweep
    from apps.reports.services import reports_delete_expired

    result = {
        "temp_entries": temp_files_cleanup(),
        "audio_deleted": audio_retention_cleanup(),
        "jobs_deleted": jobs_retention_cleanup(),
        "uploads_deleted": uploads_delete_abandoned(),
        "exports_deleted": reports_delete_expired(),
    }
    # Last, so the files of the uploads just deleted that were not tried inline are tried now.
    swept = pending_deletions_sweep()
    result.update(files_deleted=swept["deleted"], files_failed=swept["failed"])
    return result


@shared_task(name="workers.maintenance.prune_feed_events", base=LexisTask)
def prune_feed_events() -> int:
    """Hourly (beat): delete live-feed events older than FEED_RETENTION_HOURS."""
    from apps.feed.services import feed_prune

    return feed_prune()


@shared_task(name="workers.maintenance.requeue_stuck_jobs", base=LexisTask)
def requeue_stuck_jobs() -> dict[str, int]:
    """Requeue processing jobs past their hard limit or with a stale heartbeat."""
    from apps.core.maintenance import jobs_requeue_stuck

    result = jobs_requeue_stuck()
    return {"requeued": len(result["requeued"]), "held": len(result["held"])}


@signals.worker_ready.connect
def _sweep_own_temp_folder(**_kwargs: Any) -> None:
    """Every worker sweeps its own temp folder, at start and hourly: a transcription worker's
    container has its own /tmp (spooled audio of a job whose process was killed stays there),
    which the beat task above, run by whichever worker takes it, never sees."""
    from apps.core.maintenance import temp_files_cleanup
    from apps.core.tempfiles import start_sweeping

    start_sweeping(temp_files_cleanup)
