"""Tasks of the reports queue: build one report; create the weekly usage reports and republish
reports whose message was lost (beat)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from apps.reports import rendering, services

from .base import LexisTask, TransientError


@shared_task(
    name="workers.reports.generate_report",
    base=LexisTask,
    max_retries=settings.REPORT_MAX_ATTEMPTS - 1,
)
def generate_report(report_id: str) -> str | None:
    try:
        report = services.report_generate(report_id=report_id)
    except rendering.ReportInputError:
        raise  # recorded as failed; dead-lettered without retries
    except Exception as exc:
        from apps.reports.models import Report, ReportStatus

        if Report.objects.filter(pk=report_id, status=ReportStatus.QUEUED).exists():
            raise TransientError(str(exc)) from exc  # retried with backoff and jitter
        raise
    return report.status if report else None


@shared_task(name="workers.reports.create_weekly_usage_reports", base=LexisTask)
def create_weekly_usage_reports() -> int:
    return len(services.weekly_usage_reports_create())


@shared_task(name="workers.reports.redispatch_stale_reports", base=LexisTask)
def redispatch_stale_reports() -> dict[str, int]:
    """Publish reports whose message was never sent (broker down) or may be lost."""
    return services.reports_redispatch_stale()
