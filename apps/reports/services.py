"""Request, generate, retry and delete reports; the weekly usage report and its email.

A report is built by `report_generate`, which is safe to run for the same report any number of
times, concurrently or after a crash, as `apps.audio_jobs.processing` is for jobs:

1. A lease (a PostgreSQL advisory lock on its own connection) admits one live worker per report;
   a duplicate message (the sweeper's, a redelivery) is dropped while that worker lives.
2. The claim counts the try in `attempts` and fails the report as `too_many_attempts` once
   REPORT_MAX_ATTEMPTS tries (EXPORT_MAX_ATTEMPTS for an export) were used up, so a report whose
   build kills its worker (OOM) is not redelivered for ever.
3. The result and a failure are written with conditional UPDATEs on a `running` row: a report
   deleted meanwhile (by its user, or with its job) stays deleted and its file is discarded.

A publish that fails (broker down) is logged; `reports_redispatch_stale` (beat) publishes it later.

The file is guarded as a job's audio is (`apps.core.storage.guard_file`): its deletion, due in
GUARD_DELAY, is committed before it is stored and called off by the transaction that marks the
report ready. A worker killed in between (hard time limit, OOM) leaves no file behind for good:
the retry stores its own under a new key, and the sweep deletes the first once it is due.

Data exports (kind `export`, `apps.reports.exports`) are reports too: requested by
`export_request` (people only; one member export in progress per requester, one organisation
export per organisation), built by the same claim and lease into an anonymous temp file under
their own task's time limits (`export_time_limits`) and at most EXPORT_MAX_ATTEMPTS tries (one
claimed again after its last try outlived its time limit, killed at the hard limit, fails with
`time_limit` rather than being built again), stored guarded like any report, and deleted with
their file EXPORT_RETENTION_DAYS after they were built (`reports_delete_expired`, run by the
hourly retention task). They are told by email to whoever asked (who may also poll the report),
never on the organisation's live feed (read by every member, viewer and API key) nor to
webhooks: neither has any business with a member's request for their data.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audio_jobs.leases import JobLease
from apps.core.exceptions import ApplicationError, ConflictError
from apps.core.storage import (
    GUARD_DELAY,
    delete_files_on_commit,
    discard_guarded_file,
    guard_file,
    unguard_file,
)

from . import exports, rendering, selectors
from .models import (
    FORMATS_OF_KIND,
    PENDING_STATUSES,
    ExportScope,
    Report,
    ReportFormat,
    ReportKind,
    ReportStatus,
)

logger = logging.getLogger(__name__)

# A report never published is published by the sweeper once it is this old (the request that
# created it publishes it right after its commit).
NEVER_DISPATCHED_GRACE_SECONDS = 15
# Usage reports cover dates from here to a year ahead (earlier dates hold no usage, and date
# arithmetic near year 1 overflows).
EARLIEST_PERIOD_DATE = date(2000, 1, 1)
# What viewers (and report.failed webhooks) read of a failure that is not their input's fault.
GENERATION_FAILED_MESSAGE = "The report could not be generated (an internal error, logged)."
EXPORT_TIME_LIMIT_MESSAGE = (
    "The export did not finish within its time limit (EXPORT_TIME_LIMIT_SECONDS). "
    "Ask for it without audio, or ask an operator to raise the limit."
)


def _lease(report_id: str) -> JobLease:
    """The advisory lock of one report (JobLease's mechanism, with keys apart from jobs')."""
    return JobLease(f"report:{report_id}")


def _enqueue(report_id: str) -> None:
    transaction.on_commit(lambda: report_dispatch(report_id=report_id), robust=True)


def report_dispatch(*, report_id: Any) -> bool:
    """Publish the report's task. A broker failure is logged; the sweeper publishes it later."""
    from workers.reports import generate_export, generate_report

    kind = (
        Report.objects.filter(pk=report_id, status__in=PENDING_STATUSES)
        .values_list("kind", flat=True)
        .first()
    )
    if kind is None:
        return False
    # Exports have a task of their own: the same build, under EXPORT_* time limits.
    task = generate_export if kind == ReportKind.EXPORT else generate_report
    try:
        task.apply_async(args=[str(report_id)])
    except Exception:
        logger.warning(
            "Could not publish report %s; the sweeper will retry", report_id, exc_info=True
        )
        return False
    Report.objects.filter(pk=report_id).update(dispatched_at=timezone.now())
    return True


def reports_redispatch_stale(*, now=None) -> dict[str, int]:
    """Sweeper: publish reports whose message was never sent, or may be lost.

    That is a report queued and never published, or queued or running with no change for
    REPORT_REDISPATCH_AFTER_SECONDS since it was last published (a worker lost with its node).
    A duplicate is harmless: the report's lease drops it while a live worker builds the report.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.REPORT_REDISPATCH_AFTER_SECONDS)
    never = Report.objects.filter(
        status=ReportStatus.QUEUED,
        dispatched_at__isnull=True,
        updated_at__lt=now - timedelta(seconds=NEVER_DISPATCHED_GRACE_SECONDS),
    )
    stale = Report.objects.filter(
        status__in=PENDING_STATUSES,
        dispatched_at__lt=stale_before,
        updated_at__lt=stale_before,
    )
    republished = 0
    for report_id in list(never.values_list("pk", flat=True)[:500]) + list(
        stale.values_list("pk", flat=True)[:500]
    ):
        republished += report_dispatch(report_id=report_id)
    return {"republished": republished}


def report_request(
    *,
    organisation,
    user,
    kind: str,
    format: str,
    job_id: str | None = None,
    period_start: date | None = None,
    period_end: date | None = None,
) -> Report:
    """Create a queued report and generate it on the reports queue after commit."""
    if format not in FORMATS_OF_KIND[ReportKind(kind)]:
        allowed = sorted(FORMATS_OF_KIND[ReportKind(kind)])
        raise ApplicationError(
            f"A {kind} report is available as {', '.join(allowed)}.", code="invalid_report_format"
        )
    fields: dict[str, Any] = {}
    if kind == ReportKind.TRANSCRIPT:
        from apps.audio_jobs.models import JobStatus
        from apps.audio_jobs.selectors import job_get

        if job_id is None:
            raise ApplicationError("A transcript report needs a job_id.", code="job_required")
        if period_start is not None or period_end is not None:
            raise ApplicationError(
                "A transcript report covers its job: leave out period_start and period_end.",
                code="invalid_report_input",
            )
        job = job_get(organisation=organisation, job_id=job_id)
        if job.status != JobStatus.COMPLETED:
            raise ConflictError(
                "Only a completed job has a transcript report.", code="job_not_completed"
            )
        fields["job"] = job
    else:
        if job_id is not None:
            raise ApplicationError(
                f"A {kind} report covers a period, not a job: leave out job_id.",
                code="invalid_report_input",
            )
        today = timezone.now().date()
        latest = today + timedelta(days=366)
        for value in (period_start, period_end):
            if value is not None and not EARLIEST_PERIOD_DATE <= value <= latest:
                raise ApplicationError(
                    f"Report periods lie between {EARLIEST_PERIOD_DATE} and {latest}.",
                    code="invalid_period",
                )
        period_end = period_end or today + timedelta(days=1)
        period_start = period_start or period_end - timedelta(days=7)
        if period_start >= period_end or (period_end - period_start).days > 366:
            raise ApplicationError("The period must be 1 to 366 days.", code="invalid_period")
        fields.update(period_start=period_start, period_end=period_end)
    report = Report.objects.create(
        organisation=organisation, created_by=user, kind=kind, format=format, **fields
    )
    _enqueue(str(report.pk))
    return report


@transaction.atomic
def report_retry(*, report: Report) -> Report:
    """Queue a failed report again (with all its tries) and publish it after commit."""
    locked = Report.objects.select_for_update().filter(pk=report.pk).first()
    if locked is None or locked.status != ReportStatus.FAILED:
        raise ConflictError("Only a failed report can be retried.", code="report_not_failed")
    locked.status = ReportStatus.QUEUED
    locked.attempts = 0
    locked.error_code = ""
    locked.dispatched_at = None
    try:
        with transaction.atomic():  # a savepoint: another export of the organisation is pending
            locked.save(
                update_fields=["status", "attempts", "error_code", "dispatched_at", "updated_at"]
            )
    except IntegrityError:
        if locked.kind != ReportKind.EXPORT:
            raise
        raise _export_in_progress(locked.export_scope) from None
    _enqueue(str(locked.pk))
    return locked


def report_delete(*, report: Report) -> None:
    """Delete a report, then its file after commit (`apps.core.storage`: a failed delete is kept
    and retried, never raised).

    The row is locked and read again: a report that became ready since the caller loaded it is
    deleted with the file it has now.
    """
    with transaction.atomic():
        locked = Report.objects.select_for_update().filter(pk=report.pk).first()
        if locked is None:
            return
        key = locked.file_key
        locked.delete()
        delete_files_on_commit([key])  # durably: a failed delete is retried, never an orphan


def _usage_period(report: Report) -> tuple[date, date]:
    """The period of a usage report (report_request always sets both ends)."""
    if report.period_start is None or report.period_end is None:
        raise ValueError(f"Usage report {report.pk} has no period.")
    return report.period_start, report.period_end


@contextmanager
def _rendered(report: Report) -> Iterator[tuple[File, str, int]]:
    """The report's content as a file to store, its filename and its size.

    An export is written to an anonymous temp file, closed (and so freed) however this ends.
    """
    if report.kind != ReportKind.EXPORT:
        content, filename = _render(report)
        yield ContentFile(content), filename, len(content)
        return
    with exports.export_temp_file() as temp:
        exports.build_export(report, temp)
        size = temp.tell()
        temp.seek(0)
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        yield File(temp), f"export-{report.export_scope}-{stamp}.zip", size


def _render(report: Report) -> tuple[bytes, str]:
    fmt = ReportFormat(report.format)
    if report.kind == ReportKind.TRANSCRIPT:
        data = rendering.transcript_data(report.job)
        stem = f"transcript-{report.job_id}"
        content = {
            ReportFormat.PDF: rendering.transcript_pdf,
            ReportFormat.JSON: rendering.transcript_json,
            ReportFormat.CSV: rendering.transcript_csv,
        }[fmt](data)
    else:
        period_start, period_end = _usage_period(report)
        data = rendering.usage_data(report.organisation, period_start, period_end)
        stem = f"usage-{period_start}-{period_end}"
        content = {
            ReportFormat.CSV: rendering.usage_csv,
            ReportFormat.XLSX: rendering.usage_xlsx,
            ReportFormat.PDF: rendering.usage_pdf,
        }[fmt](data)
    return content, f"{stem}.{fmt.value}"


def report_generate(*, report_id: str) -> Report | None:
    """Build the file of a queued report. Raises on failure (the task decides on a retry).

    A failure is recorded on the report at once (reason visible while it is retried); after
    REPORT_MAX_ATTEMPTS tries, or on an input error, the report is `failed`. Returns None, without
    building anything, for a duplicate message, a report that is no longer pending, one out of
    tries (failed as `too_many_attempts`), or one deleted while it was built.
    """
    lease = _lease(report_id)
    if not lease.acquire():
        logger.info(
            "Report %s is being built by another live worker; dropping duplicate", report_id
        )
        return None
    try:
        report = _claim(report_id)
        if report is None:
            return None
        return _build(report)
    finally:
        lease.release()


def _max_attempts(report: Report) -> int:
    """Tries of one report: EXPORT_MAX_ATTEMPTS for a data export, REPORT_MAX_ATTEMPTS else."""
    if report.kind == ReportKind.EXPORT:
        return settings.EXPORT_MAX_ATTEMPTS
    return settings.REPORT_MAX_ATTEMPTS


def _outlived_time_limit(report: Report, now) -> bool:
    """An export found `running` (its last try recorded nothing) that was claimed longer ago
    than its soft time limit: that try was stopped at its limit without recording it (killed at
    the hard limit), and a new one would be too. Measured from the claim (the build does not
    touch the row), so the soft limit rather than the hard one: a try killed at the hard limit
    and redelivered at once is caught however late its claim came after its task started."""
    if report.kind != ReportKind.EXPORT or report.status != ReportStatus.RUNNING:
        return False
    return (now - report.updated_at).total_seconds() >= export_time_limits()[0]


@transaction.atomic
def _claim(report_id: str) -> Report | None:
    report = (
        Report.objects.select_for_update().filter(pk=report_id, status__in=PENDING_STATUSES).first()
    )
    if report is None:
        return None  # done, deleted or failed for good
    if _outlived_time_limit(report, timezone.now()):
        _fail_for_good(report, code="time_limit", message=EXPORT_TIME_LIMIT_MESSAGE)
        report.save(
            update_fields=["status", "error_code", "error_message", "finished_at", "updated_at"]
        )
        _publish_failed(report)
        _dead_letter_poison(report)
        logger.warning("Export %s was stopped at its time limit; not built again", report.pk)
        return None
    if report.attempts >= _max_attempts(report):
        # Every try was used up, and this message still finds the report pending: the last
        # tries ended without recording anything (the worker was killed, e.g. for memory).
        # Building it again would kill the next worker too.
        _fail_for_good(
            report,
            code="too_many_attempts",
            message=(
                f"The report was tried {report.attempts} times without finishing (the worker "
                "stopped during the last tries); it was stopped so it cannot block the queue. "
                "Retry it; contact support if it keeps failing."
            ),
        )
        report.save(
            update_fields=["status", "error_code", "error_message", "finished_at", "updated_at"]
        )
        _publish_failed(report)
        _dead_letter_poison(report)
        logger.warning("Report %s failed: %s", report.pk, report.error_message)
        return None
    report.status = ReportStatus.RUNNING
    report.attempts += 1
    report.save(update_fields=["status", "attempts", "updated_at"])
    return report


class StoredFileLost(Exception):
    """The report's file was deleted by the sweep before the report could point at it (storing
    and committing took longer than GUARD_DELAY): the try failed, a retry stores it again."""


def _build(report: Report) -> Report | None:
    started = time.monotonic()
    key = ""
    guard = None
    committed: list[bool] = []
    try:
        with _rendered(report) as (content, filename, size):
            # Storing the file and marking the report ready fail like rendering does: the
            # failure is recorded (queued for a retry, or failed), never left `running`.
            # A name of its own for each try: a key is never reused, so a delete of an earlier
            # try's file still pending (apps.core.storage) can never remove a later one's file.
            wanted = (
                f"reports/{report.organisation_id}/{report.pk}/{secrets.token_hex(6)}-{filename}"
            )
            # Committed before storing (this runs outside any transaction): should the worker be
            # killed before the report is marked ready, no except clause runs, and the sweep
            # deletes the file once this is due. The transaction that marks it ready calls it
            # off. An export may take its whole time limit to store.
            if not Report.objects.filter(pk=report.pk, status=ReportStatus.RUNNING).exists():
                # Deleted (by its requester, or with its organisation) while it was built: an
                # archive, possibly large, is not stored for nobody. Checked again when it is
                # marked ready (a delete while storing: the file is discarded).
                logger.info("Report %s was deleted while it was built; not stored", report.pk)
                return None
            guard = guard_file(wanted, delay=_guard_delay(report))
            key = default_storage.save(wanted, content)
        now = timezone.now()
        ready = {
            "status": ReportStatus.READY,
            "file_key": key,
            "filename": filename,
            "size_bytes": size,
            "error_code": "",
            "error_message": "",
            "generation_seconds": round(time.monotonic() - started, 3),
            "finished_at": now,
            "updated_at": now,
        }
        if report.kind == ReportKind.EXPORT:
            ready["expires_at"] = now + timedelta(days=settings.EXPORT_RETENTION_DAYS)
        with transaction.atomic():
            # A conditional UPDATE, not save(): save() would INSERT a report deleted meanwhile
            # again (or fail on its deleted job).
            marked = Report.objects.filter(pk=report.pk, status=ReportStatus.RUNNING).update(
                **ready
            )
            if marked:
                if not unguard_file(guard):
                    # The guard came due and the sweep deleted the file: never point at it.
                    raise StoredFileLost(f"Report {report.pk}: its stored file was swept")
                # Runs first after the commit, before the notification hooks _notify_ready adds.
                transaction.on_commit(lambda: committed.append(True))
                for name, value in ready.items():
                    setattr(report, name, value)
                _notify_ready(report)
    except Exception as exc:
        if committed:
            # The report is ready; a notification hook raised after the commit. Its file stays.
            logger.error(
                "Report %s is ready; a hook after its commit failed", report.pk, exc_info=True
            )
            return report
        if guard is not None:  # stored (or being stored), but the report did not become ready
            discard_guarded_file(key or guard.key, guard)
        invalid = isinstance(exc, rendering.ReportInputError)
        # An export that ran out of time would run out again: failed for good, not retried.
        timed_out = isinstance(exc, SoftTimeLimitExceeded) and report.kind == ReportKind.EXPORT
        if not invalid:
            # The reason stays in the logs: an exception's text names paths, buckets and hosts,
            # and the report (and its report.failed webhook) is read by every viewer.
            logger.warning("Report %s could not be generated", report.pk, exc_info=True)
        if timed_out:
            reason = EXPORT_TIME_LIMIT_MESSAGE
        else:
            reason = str(exc) if invalid else GENERATION_FAILED_MESSAGE
        if not report_record_failure(
            report=report,
            reason=reason,
            final=invalid or timed_out or report.attempts >= _max_attempts(report),
            code=(
                getattr(exc, "code", "invalid_input")
                if invalid
                else ("time_limit" if timed_out else "generation_failed")
            ),
        ):
            return None  # deleted meanwhile: nothing to retry, nobody to tell
        raise
    if not marked:
        discard_guarded_file(key, guard)
        logger.info("Report %s was deleted while it was built; its file is discarded", report.pk)
        return None
    return report


def report_record_failure(
    *, report: Report, reason: str, final: bool, code: str = "generation_failed"
) -> bool:
    """Record a failed try of a report being built: queued for a retry, or failed for good
    (with `code`).

    Returns False, recording nothing, if the report is no longer being built (deleted meanwhile).
    """
    if final:
        _fail_for_good(report, code=code, message=reason)
    else:
        report.status = ReportStatus.QUEUED
        report.error_message = reason[:2000]
        report.finished_at = None
    report.updated_at = timezone.now()
    fields = ["status", "error_code", "error_message", "finished_at", "updated_at"]
    with transaction.atomic():
        recorded = Report.objects.filter(pk=report.pk, status=ReportStatus.RUNNING).update(
            **{name: getattr(report, name) for name in fields}
        )
        if recorded and final:
            _publish_failed(report)
    if not recorded:
        logger.info("Report %s was deleted while it was built; failure not recorded", report.pk)
        return False
    logger.warning("Report %s failed (final=%s): %s", report.pk, final, reason)
    return True


def _fail_for_good(report: Report, *, code: str, message: str) -> None:
    report.status = ReportStatus.FAILED
    report.error_code = code
    report.error_message = message[:2000]
    report.finished_at = timezone.now()


def _publish_failed(report: Report) -> None:
    from apps.webhooks.services import event_publish

    if report.kind == ReportKind.EXPORT:
        # Exports are told to people only (module docstring): the requester polls the report.
        return
    data = {**_report_data(report), "error": report.error_message}
    event_publish(organisation=report.organisation, event_type="report.failed", data=data)
    _announce(report, "report.failed", data)


def _announce(report: Report, event_type: str, data: dict[str, Any]) -> None:
    """The report's outcome on the live feed (in the transaction that records it). Never an
    export's: the feed is the organisation's, read by every member, viewer and API key."""
    from apps.feed.services import feed_publish

    if report.kind == ReportKind.EXPORT:
        return
    feed_publish(
        organisation_id=report.organisation_id, type=event_type, subject_id=report.pk, data=data
    )


def _dead_letter_poison(report: Report) -> None:
    """Store a dead letter for a report failed as `too_many_attempts` (as jobs do), after commit."""
    from workers.base import dead_letter
    from workers.queues import Queue

    payload: dict[str, Any] = {
        "task_name": (
            "workers.reports.generate_export"
            if report.kind == ReportKind.EXPORT
            else "workers.reports.generate_report"
        ),
        "task_id": f"report-{report.pk}",
        "queue": str(Queue.REPORTS),
        "args": [str(report.pk)],
        "kwargs": {},
        "exception_type": "apps.reports.services.PoisonMessage",
        "error": report.error_message,
        "traceback": "",
        "attempts": report.attempts,
        "request_id": "",
    }
    transaction.on_commit(lambda: dead_letter(payload), robust=True)


def _report_data(report: Report) -> dict[str, Any]:
    data = {
        "report_id": str(report.pk),
        "kind": report.kind,
        "format": report.format,
        "job_id": str(report.job_id) if report.job_id else None,
        "status": report.status,
        "download_url": f"{settings.PUBLIC_BASE_URL}/api/v1/reports/{report.pk}/download",
    }
    if report.kind == ReportKind.EXPORT:
        data["export_scope"] = report.export_scope
    return data


def _notify_ready(report: Report) -> None:
    from apps.notifications.models import NotificationKind
    from apps.notifications.services import email_enqueue, unsubscribe_url, wants
    from apps.webhooks.services import event_publish

    is_export = report.kind == ReportKind.EXPORT
    if not is_export:  # exports are told to people only (module docstring)
        event_publish(
            organisation=report.organisation, event_type="report.ready", data=_report_data(report)
        )
    emails: list[tuple[str, str, dict[str, Any]]] = []
    download_url = _report_data(report)["download_url"]
    if report.scheduled:
        data = rendering.usage_data(report.organisation, *_usage_period(report))
        for user in _organisation_admins(report.organisation):
            if wants(user=user, kind=NotificationKind.WEEKLY_USAGE):
                emails.append(
                    (
                        user.email,
                        "weekly_usage",
                        {
                            "organisation_name": report.organisation.name,
                            "period_start": str(report.period_start),
                            "period_end": str(data["last_day"]),
                            "total": data["total"],
                            "by_member": data["by_member"][:20],
                            "download_url": download_url,
                            "unsubscribe_url": unsubscribe_url(
                                user=user, kind=NotificationKind.WEEKLY_USAGE
                            ),
                        },
                    )
                )
    elif report.created_by is not None and wants(
        user=report.created_by, kind=NotificationKind.REPORT
    ):
        emails.append(
            (
                report.created_by.email,
                "report_ready",
                {
                    "report_id": str(report.pk),
                    "kind": report.get_kind_display(),
                    "format": report.format.upper(),
                    "filename": report.filename,
                    "download_url": download_url,
                    "unsubscribe_url": unsubscribe_url(
                        user=report.created_by, kind=NotificationKind.REPORT
                    ),
                },
            )
        )

    # In the outbox, in the transaction that marks the report ready: published after commit, and
    # sent by beat's sweep if the broker is down then (apps.notifications.services.email_enqueue).
    for email, template, context in emails:
        email_enqueue(
            template=template, to=[email], context=context, dedupe_key=f"report:{report.pk}:{email}"
        )
    # Last in the transaction: the feed's order lock is held from here to the commit. Never an
    # export's (the email above, and the report itself, tell its requester).
    if not is_export:
        _announce(report, "report.ready", _report_data(report))


def _organisation_admins(organisation) -> list:
    from apps.accounts.models import Membership, Role

    return [
        m.user
        for m in Membership.objects.filter(
            organisation=organisation, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True
        ).select_related("user")
    ]


def weekly_usage_reports_create(*, today: date | None = None) -> list[Report]:
    """One scheduled usage report (last 7 full days) per active organisation; idempotent.

    Publishes every one of them still queued, new or not. One organisation's failure does not
    stop the others; the first error is raised once all were tried.
    """
    from apps.accounts.models import Organisation

    period_end = today or timezone.now().date()
    period_start = period_end - timedelta(days=7)
    created = []
    errors: list[Exception] = []
    for organisation in Organisation.objects.filter(is_active=True):
        try:
            with transaction.atomic():
                report, new = Report.objects.get_or_create(
                    organisation=organisation,
                    scheduled=True,
                    period_start=period_start,
                    period_end=period_end,
                    format=settings.REPORT_WEEKLY_FORMAT,
                    defaults={"kind": ReportKind.USAGE},
                )
                if report.status == ReportStatus.QUEUED:
                    # New, or left queued by an earlier run whose publish failed.
                    _enqueue(str(report.pk))
        except Exception as exc:
            logger.exception(
                "Weekly usage report of organisation %s failed; going on with the others",
                organisation.pk,
            )
            errors.append(exc)
            continue
        if new:
            created.append(report)
    if errors:
        # After every organisation had its turn: the task's retry and dead-letter rules apply
        # (a new run creates only what is missing).
        raise errors[0]
    return created


# ---- Data exports -------------------------------------------------------------------------------
EXPORT_TIME_LIMIT_GRACE_SECONDS = 60


def export_time_limits() -> tuple[int, int]:
    """(soft, hard) time limits in seconds of the export task (`workers.reports.ExportTask`).

    Capped, as every task is, by CELERY_MAX_TASK_TIME_LIMIT (the broker's visibility timeout is
    above it, so a running export is never handed to a second worker).
    """
    ceiling = settings.CELERY_MAX_TASK_TIME_LIMIT
    grace = min(EXPORT_TIME_LIMIT_GRACE_SECONDS, ceiling // 2)
    soft = settings.EXPORT_TIME_LIMIT_SECONDS
    return min(soft, ceiling - grace), min(soft + grace, ceiling)


def _guard_delay(report: Report) -> timedelta:
    """How long a stored file may wait for its report to be marked ready: an export may spend
    its whole hard time limit storing a large archive."""
    if report.kind != ReportKind.EXPORT:
        return GUARD_DELAY
    return max(GUARD_DELAY, timedelta(seconds=export_time_limits()[1] + 600))


def _export_in_progress(scope: str) -> ConflictError:
    if scope == ExportScope.ORGANISATION:
        message = "An export of this organisation is already in progress; wait for it to finish."
    else:
        message = "Your export is already in progress; wait for it to finish."
    return ConflictError(message, code="export_in_progress")


def export_request(
    *, organisation, user, role: str, scope: str, include_audio: bool = False, meta: Any = None
) -> Report:
    """Queue a data export (a report of kind `export`) and build it after commit.

    People only: `user` is required (an API key cannot ask for one). The organisation scope
    needs an owner or admin; the member scope is any member's own data. One member export in
    progress per requester, and one organisation export per organisation (409
    `export_in_progress`, held by partial unique constraints): apart, so that no member can hold
    off the owners' and admins' export. With audio, the
    audio's recorded size is checked against EXPORT_MAX_AUDIO_BYTES first (400
    `export_audio_too_large`), and again while the archive is built.
    """
    from apps.accounts.exceptions import Forbidden
    from apps.accounts.models import Role, role_at_least
    from apps.audit.services import audit_record

    if user is None or not getattr(user, "pk", None):
        raise Forbidden(
            "Data exports are asked for by a person, not an API key.", code="export_needs_user"
        )
    if scope == ExportScope.ORGANISATION and not role_at_least(role, Role.ADMIN):
        raise Forbidden("Only owners and admins can export the organisation's data.")
    if include_audio:
        total = exports.audio_bytes_of(
            organisation=organisation, user=user if scope == ExportScope.MEMBER else None
        )
        try:
            exports.audio_cap_check(total=total)
        except exports.ExportAudioTooLarge as exc:
            raise ApplicationError(
                str(exc),
                code="export_audio_too_large",
                details={"audio_bytes": total, "max_bytes": settings.EXPORT_MAX_AUDIO_BYTES},
            ) from None
    if selectors.export_pending_exists(organisation=organisation, scope=scope, user=user):
        raise _export_in_progress(scope)
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: two requests at once, one wins
                report = Report.objects.create(
                    organisation=organisation,
                    created_by=user,
                    kind=ReportKind.EXPORT,
                    format=ReportFormat.ZIP,
                    export_scope=scope,
                    include_audio=include_audio,
                )
        except IntegrityError:
            raise _export_in_progress(scope) from None
        audit_record(
            action="export.requested",
            actor=user,
            organisation=organisation,
            target=report,
            meta=meta,
            metadata={"scope": scope, "include_audio": include_audio},
        )
        _enqueue(str(report.pk))
    return report


def export_download_check(*, report: Report, user, meta: Any = None) -> None:
    """Before a data export's file is served: refuse an expired one (410 `export_expired`) and
    record `export.downloaded`. Other reports pass unrecorded."""
    from apps.audit.services import audit_record

    if report.kind != ReportKind.EXPORT:
        return
    if report.expires_at is not None and report.expires_at <= timezone.now():
        raise ApplicationError(
            "This export has expired; ask for a new one.", code="export_expired", status_code=410
        )
    audit_record(
        action="export.downloaded",
        actor=user,
        organisation=report.organisation,
        target=report,
        meta=meta,
        metadata={"scope": report.export_scope, "size_bytes": report.size_bytes},
    )


def reports_delete_expired(*, now=None, limit: int = 500) -> int:
    """Delete the exports past their expiry, and failed ones EXPORT_RETENTION_DAYS old, with
    their files (durably: `report_delete`). Run by the hourly retention task."""
    from django.db.models import Q

    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.EXPORT_RETENTION_DAYS)
    expired = Report.objects.filter(
        Q(expires_at__lte=now) | Q(status=ReportStatus.FAILED, updated_at__lt=cutoff),
        kind=ReportKind.EXPORT,
    ).order_by("created_at")
    deleted = 0
    for report in expired[:limit]:
        report_delete(report=report)
        deleted += 1
    if deleted:
        logger.info("Deleted %d expired data exports", deleted)
    return deleted
