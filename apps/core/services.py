"""Writes of the core app: the dead-letter store (stored-file deletion: apps.core.storage)."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from .exceptions import ConflictError, ServiceUnavailableError
from .models import DeadLetter


def dead_letter_record(
    *,
    task_name: str,
    task_id: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    exception_type: str,
    error: str,
    traceback: str = "",
    attempts: int = 1,
    request_id: str = "",
) -> DeadLetter:
    """Store a failed message once per task id (a redelivered failure updates the same row)."""
    dead_letter, _created = DeadLetter.objects.update_or_create(
        task_id=task_id,
        status=DeadLetter.Status.PENDING,
        defaults={
            "task_name": task_name,
            "queue": queue,
            "args": args,
            "kwargs": kwargs,
            "exception_type": exception_type[:200],
            "error": error[:10_000],
            "traceback": traceback[:50_000],
            "attempts": attempts,
            "request_id": request_id[:128],
        },
    )
    if _created:
        from .metrics import DEAD_LETTERS

        DEAD_LETTERS.labels(task_name, queue).inc()
    return dead_letter


TRANSCRIBE_TASK = "workers.transcription.transcribe_job"
REPORT_TASK = "workers.reports.generate_report"
# A data export is a report built by a task of its own (its time limits): retried the same way.
EXPORT_TASK = "workers.reports.generate_export"
REPORT_TASKS = frozenset({REPORT_TASK, EXPORT_TASK})


@transaction.atomic
def dead_letter_requeue(*, dead_letter: DeadLetter) -> DeadLetter:
    """Send the message again, under a new task id, once this row's change is committed.

    A transcription's dead letter retries its job instead (`job_retry`), and a report's or data
    export's its report (`report_retry`): each was failed before it was dead-lettered, so the
    bare message would only be skipped. Raises `ConflictError` (the row stays pending) when the
    job or report finished or was deleted meanwhile: nothing to run again.
    """
    from lexiscore.celery import app

    locked = DeadLetter.objects.select_for_update().get(pk=dead_letter.pk)
    if locked.status != DeadLetter.Status.PENDING:  # another operator requeued it meanwhile
        raise ConflictError(
            f"Dead letter {locked.pk} is {locked.status} already.", code="dead_letter_not_pending"
        )
    if locked.task_name == TRANSCRIBE_TASK:
        _requeue_transcription(locked)
    elif locked.task_name in REPORT_TASKS:
        _requeue_report(locked)
    else:
        # Published now, inside the transaction: if the broker refuses, the row stays pending
        # (rolled back) and the operator is told, rather than marked requeued with nothing sent.
        # A commit failing after the publish leaves a pending row for a message that went out:
        # a duplicate at worst, which every task tolerates.
        try:
            app.send_task(
                locked.task_name, args=locked.args, kwargs=locked.kwargs, queue=locked.queue
            )
        except Exception as exc:
            raise ServiceUnavailableError(
                f"The broker refused the message ({type(exc).__name__}); try again later."
            ) from exc
    locked.status = DeadLetter.Status.REQUEUED
    locked.requeued_at = timezone.now()
    locked.requeue_count += 1
    locked.save(update_fields=["status", "requeued_at", "requeue_count", "updated_at"])
    return locked


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    """The id a dead letter names, or None when it names none (a malformed message)."""
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _requeue_transcription(dead_letter: DeadLetter) -> None:
    from apps.audio_jobs import services as job_services
    from apps.audio_jobs.models import ACTIVE_STATUSES, JobStatus, TranscriptionJob

    _requeue_row(
        dead_letter,
        model=TranscriptionJob,
        id_name="job_id",
        noun="Job",
        code="job",
        failed=JobStatus.FAILED,
        # Active but not failed (recording the failure failed too): published again if it waits
        # in the queue; a processing one is the stuck-job sweeper's.
        pending=ACTIVE_STATUSES,
        retry=lambda job: job_services.job_retry(job=job),
        dispatch=lambda pk: job_services.job_dispatch(job_id=pk, again=True),
    )


def _requeue_report(dead_letter: DeadLetter) -> None:
    from apps.reports import services as report_services
    from apps.reports.models import PENDING_STATUSES, Report, ReportStatus

    _requeue_row(
        dead_letter,
        model=Report,
        id_name="report_id",
        noun="Report",
        code="report",
        failed=ReportStatus.FAILED,
        pending=PENDING_STATUSES,
        retry=lambda report: report_services.report_retry(report=report),
        dispatch=lambda pk: report_services.report_dispatch(report_id=pk),
    )


def _requeue_row(
    dead_letter: DeadLetter,
    *,
    model: Any,
    id_name: str,
    noun: str,
    code: str,
    failed: str,
    pending: Any,
    retry: Any,
    dispatch: Any,
) -> None:
    """Run the job or report a dead letter names again: a failed one is retried through its
    service, a pending one published again; a finished or deleted one is refused (ConflictError:
    nothing to run again, the operator purges the dead letter)."""
    named = (dead_letter.args or [None])[0] or dead_letter.kwargs.get(id_name)
    pk = _uuid_or_none(named)
    row = model.objects.select_for_update().filter(pk=pk).first() if pk else None
    if row is None:
        raise ConflictError(
            f"{noun} {named} no longer exists; purge this dead letter.", code=f"{code}_not_found"
        )
    if row.status == failed:
        retry(row)
    elif row.status in pending:
        transaction.on_commit(lambda: dispatch(row.pk))
    else:
        raise ConflictError(
            f"{noun} {row.pk} is {row.status}: there is nothing to run again; purge this dead "
            "letter.",
            code=f"{code}_not_retryable",
        )


def dead_letter_purge(*, older_than=None, status: str | None = None) -> int:
    """Delete dead letters (all, or those older than a time / of a status); returns the count."""
    queryset = DeadLetter.objects.all()
    if older_than is not None:
        queryset = queryset.filter(created_at__lt=older_than)
    if status:
        queryset = queryset.filter(status=status)
    deleted, _ = queryset.delete()
    return deleted
