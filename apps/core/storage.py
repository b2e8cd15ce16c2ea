"""Durable deletion of stored files: a file whose row goes is deleted, or kept track of until it is.

`delete_files_on_commit(keys)` records each key as a `PendingDeletion` row in the caller's
transaction. After the commit it tries to delete the files; a row goes only when the storage
confirmed the delete (a missing file counts as deleted). A rolled-back transaction leaves both the
files and their rows untouched. Deletes that fail (storage down, throttled, a permission error)
stay as rows, and `pending_deletions_sweep` (run by the hourly retention task) tries them again
with a growing delay, for ever: a file is never silently forgotten. A row that keeps failing is
logged at ERROR from its ALERT_AFTER_ATTEMPTS-th failure on, and shows in the
`lexiscore_storage_deletions_failing` gauge (docs/operations.md, "Retention").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from .models import PendingDeletion

logger = logging.getLogger(__name__)

# After a failed attempt the next waits RETRY_BASE_DELAY * 2^(failures - 1), at most
# RETRY_MAX_DELAY; the sweep runs hourly, so the first retries are simply the next runs.
RETRY_BASE_DELAY = timedelta(minutes=30)
RETRY_MAX_DELAY = timedelta(hours=24)
ALERT_AFTER_ATTEMPTS = 5
# Deleted at once after the commit; more (an organisation's files) wait for the hourly sweep, so
# a request does not spend minutes on storage calls.
INLINE_LIMIT = 200
SWEEP_LIMIT = 5000
# How long a file may take to be stored and its row committed before `guard_file` deletes it.
GUARD_DELAY = timedelta(hours=1)


def storage_delete(key: str) -> str | None:
    """Delete one stored file. Returns None once it is gone (or never existed), else the error."""
    if not key:
        return None
    try:
        default_storage.delete(key)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:2000]
    return None


def delete_files_on_commit(keys: Iterable[str]) -> list[PendingDeletion]:
    """Delete these stored files once the current transaction commits, durably (see above).

    Outside a transaction the rows are written and the deletes tried at once.
    """
    unique = [key for key in dict.fromkeys(keys) if key]
    if not unique:
        return []
    rows = PendingDeletion.objects.bulk_create([PendingDeletion(key=key) for key in unique])
    ids = [row.pk for row in rows[:INLINE_LIMIT]]
    transaction.on_commit(lambda: _attempt_after_commit(ids), robust=True)
    return rows


def delete_files_at(keys: Iterable[str], *, at) -> list[PendingDeletion]:
    """Delete these stored files at `at` (by the hourly sweep), whatever points at them then.

    For a key that something outside this database may still write to until then (a presigned
    POST's key until its policy expires), or that nothing may point at if a process dies before
    its row commits. Written in the caller's transaction, like `delete_files_on_commit`; delete
    the row (`PendingDeletion.objects.filter(pk=...)`) to call it off.
    """
    unique = [key for key in dict.fromkeys(keys) if key]
    return PendingDeletion.objects.bulk_create(
        [PendingDeletion(key=key, next_attempt_at=at) for key in unique]
    )


def guard_file(key: str, *, delay: timedelta = GUARD_DELAY) -> PendingDeletion:
    """Before storing a file whose row is written afterwards: record its deletion, due in `delay`,
    and commit it (call this outside the transaction that writes the row). The transaction that
    writes the row deletes this one (`unguard_file`); if the process dies before that commits
    (SIGKILL at a deploy, the OOM killer), no except clause runs, and the sweep deletes the file
    once it is due. `delay` must be longer than storing and committing can take."""
    return PendingDeletion.objects.create(key=key, next_attempt_at=timezone.now() + delay)


def unguard_file(guard: PendingDeletion) -> bool:
    """Call off a `guard_file` deletion: first in the transaction that writes the file's row.

    False when the guard is gone: it came due and the sweep deleted the file (the sweep locks
    the row, so this waits for it and then finds nothing). The caller must then not write its
    row: the file it would point at no longer exists.
    """
    return PendingDeletion.objects.filter(pk=guard.pk).delete()[0] > 0


def discard_guarded_file(key: str, guard: PendingDeletion) -> None:
    """Delete a stored file whose row was not written, then its guard (a failed delete keeps the
    guard: the sweep deletes the file when it is due)."""
    if not discard_file(key):
        return
    try:
        unguard_file(guard)
    except Exception:
        logger.warning("Could not drop the pending deletion of %s (harmless)", key, exc_info=True)


def discard_file(key: str) -> bool:
    """Delete a file that no row points at (stored for a row that was never written) now.

    If the delete fails, a `PendingDeletion` row keeps it for the sweep; if even that cannot be
    written (the database is what failed), the ERROR line names the file. True: deleted now.
    """
    error = storage_delete(key)
    if error is None:
        return True
    from .metrics import STORAGE_DELETE_FAILURES

    STORAGE_DELETE_FAILURES.labels("discard").inc()
    try:
        with transaction.atomic():  # a savepoint: a failure here must not break the caller's
            PendingDeletion.objects.create(key=key, attempts=1, last_error=error)
    except Exception:
        logger.error(
            "Could not delete stored file %s (%s) nor record it for a retry: delete it by hand",
            key,
            error,
            exc_info=True,
            extra={"storage_key": key},
        )
    else:
        logger.warning(
            "Could not delete stored file %s (%s); the sweep retries",
            key,
            error,
            extra={"storage_key": key},
        )
    return False


def _attempt_after_commit(ids: list[int]) -> None:
    try:
        for row in PendingDeletion.objects.filter(pk__in=ids):
            pending_deletion_attempt(row=row)
    except Exception:
        # The rows are committed: the sweep deletes what this could not.
        logger.warning("Could not delete files after commit; the sweep retries", exc_info=True)


def pending_deletion_attempt(*, row: PendingDeletion, now=None) -> bool:
    """Try one pending deletion: drop its row on success, else record the failure and back off.

    The row is locked first (skipping it if another transaction holds it): a guard that a job's
    transaction is deleting right now (`unguard_file`, not yet committed) must not delete the
    file that job is about to commit. True when the file is gone, or the row already was.
    """
    with transaction.atomic():
        locked = (
            PendingDeletion.objects.select_for_update(skip_locked=True).filter(pk=row.pk).first()
        )
        if locked is None:
            return True  # called off or done meanwhile, or being called off now
        error = storage_delete(locked.key)
        if error is None:
            locked.delete()
            return True
        # Recorded under the lock, from the row as it is: two tries at once count twice.
        now = now or timezone.now()
        attempts = locked.attempts + 1
        delay = min(RETRY_BASE_DELAY * 2 ** (attempts - 1), RETRY_MAX_DELAY)
        PendingDeletion.objects.filter(pk=row.pk).update(
            attempts=attempts, last_error=error, next_attempt_at=now + delay
        )
    row.attempts, row.last_error, row.next_attempt_at = attempts, error, now + delay
    level = logging.ERROR if attempts >= ALERT_AFTER_ATTEMPTS else logging.WARNING
    logger.log(
        level,
        "Could not delete stored file %s (failure %d, next try at %s): %s",
        row.key,
        attempts,
        row.next_attempt_at.isoformat(),
        error,
        extra={"storage_key": row.key, "attempts": attempts},
    )
    from .metrics import STORAGE_DELETE_FAILURES

    STORAGE_DELETE_FAILURES.labels("pending").inc()
    return False


def pending_deletions_sweep(*, now=None, limit: int = SWEEP_LIMIT) -> dict[str, int]:
    """Retry the pending deletions that are due; returns how many were deleted and failed."""
    now = now or timezone.now()
    due = PendingDeletion.objects.filter(next_attempt_at__lte=now).order_by("next_attempt_at")
    deleted = failed = 0
    for row in due[:limit]:
        if pending_deletion_attempt(row=row, now=now):
            deleted += 1
        else:
            failed += 1
    if failed:
        logger.warning(
            "Pending file deletions: %d deleted, %d failed (retried later)", deleted, failed
        )
    return {"deleted": deleted, "failed": failed}
