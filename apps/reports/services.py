"""Request, generate, retry and delete reports; the weekly usage report and its email."""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from apps.core.exceptions import ApplicationError, ConflictError

from . import rendering
from .models import FORMATS_OF_KIND, Report, ReportFormat, ReportKind, ReportStatus

logger = logging.getLogger(__name__)


def _enqueue(report_id: str) -> None:
    def send() -> None:
        from workers.reports import generate_report

        generate_report.apply_async(args=[report_id])

    transaction.on_commit(send)


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
        job = job_get(organisation=organisation, job_id=job_id)
        if job.status != JobStatus.COMPLETED:
            raise ConflictError(
                "Only a completed job has a transcript report.", code="job_not_completed"
            )
        fields["job"] = job
    else:
        today = timezone.now().date()
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


def report_retry(*, report: Report) -> Report:
    if report.status != ReportStatus.FAILED:
        raise ConflictError("Only a failed report can be retried.", code="report_not_failed")
    report.status = ReportStatus.QUEUED
    report.attempts = 0
    report.save(update_fields=["status", "attempts", "updated_at"])
    _enqueue(str(report.pk))
    return report


def report_delete(*, report: Report) -> None:
    key = report.file_key
    report.delete()
    if key:
        transaction.on_commit(lambda: default_storage.delete(key))


def _usage_period(report: Report) -> tuple[date, date]:
    """The period of a usage report (report_request always sets both ends)."""
    if report.period_start is None or report.period_end is None:
        raise ValueError(f"Usage report {report.pk} has no period.")
    return report.period_start, report.period_end


def _render(report: Report) -> tuple[bytes, str]:
    fmt = ReportFormat(report.format)
    if report.kind == ReportKind.TRANSCRIPT:
        data = rendering.transcript_data(report.job)
        stem = f"transcript-{report.job_id}"
        content = (
            rendering.transcript_pdf(data)
            if fmt == ReportFormat.PDF
            else (rendering.transcript_json(data))
        )
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
    REPORT_MAX_ATTEMPTS tries, or on an input error, the report is `failed`.
    """
    with transaction.atomic():
        report = (
            Report.objects.select_for_update(skip_locked=True)
            .filter(pk=report_id, status__in=[ReportStatus.QUEUED, ReportStatus.RUNNING])
            .first()
        )
        if report is None:
            return None  # done, deleted, failed for good, or being built by another worker
        report.status = ReportStatus.RUNNING
        report.attempts += 1
        report.save(update_fields=["status", "attempts", "updated_at"])
    started = time.monotonic()
    key = ""
    try:
        content, filename = _render(report)
        # Storing the file and marking the report ready fail like rendering does: the failure
        # is recorded (queued for a retry, or failed), never left `running`.
        key = default_storage.save(
            f"reports/{report.organisation_id}/{report.pk}/{filename}", ContentFile(content)
        )
        with transaction.atomic():
            report.status = ReportStatus.READY
            report.file_key = key
            report.filename = filename
            report.size_bytes = len(content)
            report.error_message = ""
            report.generation_seconds = round(time.monotonic() - started, 3)
            report.finished_at = timezone.now()
            report.save()
            _notify_ready(report)
    except Exception as exc:
        if key:  # stored, but the report did not become ready: no orphan file
            _delete_quietly(key)
        final = isinstance(exc, rendering.ReportInputError) or (
            report.attempts >= settings.REPORT_MAX_ATTEMPTS
        )
        report_record_failure(report=report, reason=f"{type(exc).__name__}: {exc}", final=final)
        raise
    return report


def _delete_quietly(key: str) -> None:
    try:
        default_storage.delete(key)
    except Exception:
        logger.warning("Could not delete the file %s of a report that failed", key, exc_info=True)


def report_record_failure(*, report: Report, reason: str, final: bool) -> None:
    with transaction.atomic():
        report.status = ReportStatus.FAILED if final else ReportStatus.QUEUED
        report.error_message = reason[:2000]
        report.finished_at = timezone.now() if final else None
        report.save(update_fields=["status", "error_message", "finished_at", "updated_at"])
        if final:
            from apps.webhooks.services import event_publish

            event_publish(
                organisation=report.organisation,
                event_type="report.failed",
                data={**_report_data(report), "error": report.error_message},
            )
    logger.warning("Report %s failed (final=%s): %s", report.pk, final, reason)


def _report_data(report: Report) -> dict[str, Any]:
    return {
        "report_id": str(report.pk),
        "kind": report.kind,
        "format": report.format,
        "job_id": str(report.job_id) if report.job_id else None,
        "status": report.status,
        "download_url": f"{settings.PUBLIC_BASE_URL}/api/v1/reports/{report.pk}/download",
    }


def _notify_ready(report: Report) -> None:
    from apps.notifications.models import NotificationKind
    from apps.notifications.services import unsubscribe_url, wants
    from apps.webhooks.services import event_publish

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

    def send() -> None:
        from workers.emails import send_email

        for email, template, context in emails:
            send_email.apply_async(
                args=[template, [email], context],
                kwargs={"dedupe_key": f"report:{report.pk}:{email}"},
            )

    if emails:
        transaction.on_commit(send)


def _organisation_admins(organisation) -> list:
    from apps.accounts.models import Membership, Role

    return [
        m.user
        for m in Membership.objects.filter(
            organisation=organisation, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True
        ).select_related("user")
    ]


def weekly_usage_reports_create(*, today: date | None = None) -> list[Report]:
    """One scheduled usage report (last 7 full days) per active organisation; idempotent."""
    from apps.accounts.models import Organisation

    period_end = today or timezone.now().date()
    period_start = period_end - timedelta(days=7)
    created = []
    for organisation in Organisation.objects.filter(is_active=True):
        with transaction.atomic():
            report, new = Report.objects.get_or_create(
                organisation=organisation,
                scheduled=True,
                period_start=period_start,
                period_end=period_end,
                format=settings.REPORT_WEEKLY_FORMAT,
                defaults={"kind": ReportKind.USAGE},
            )
            if new:
                _enqueue(str(report.pk))
                created.append(report)
    return created
