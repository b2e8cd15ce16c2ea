"""Tasks of the reports queue: build one report or data export; create the weekly usage reports
and republish reports whose message was lost (beat)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from apps.reports import rendering, services

from .base import LexisTask, TransientError


def _generate(report_id: str) -> str | None:
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


@shared_task(
    name="workers.reports.generate_report",
    base=LexisTask,
    max_retries=settings.REPORT_MAX_ATTEMPTS - 1,
)
def generate_report(report_id: str) -> str | None:
    return _generate(report_id)


class ExportTask(LexisTask):
    """A data export (with audio) runs far past Celery's default limits (CELERY_DEFAULT_TIME_LIMIT,
    10 min): its limits are `apps.reports.services.export_time_limits()`, read from the settings
    when asked for (as `workers.maintenance.BackupTask` does), so a message without limits
    (`dead_letters requeue`) gets them too."""

    abstract = True

    @property
    def soft_time_limit(self) -> int:
        return self.__dict__.get("_soft_time_limit") or services.export_time_limits()[0]

    @soft_time_limit.setter
    def soft_time_limit(self, value: int | None) -> None:
        self.__dict__["_soft_time_limit"] = value

    @property
    def time_limit(self) -> int:
        return self.__dict__.get("_time_limit") or services.export_time_limits()[1]

    @time_limit.setter
    def time_limit(self, value: int | None) -> None:
        self.__dict__["_time_limit"] = value


@shared_task(
    name="workers.reports.generate_export",
    base=ExportTask,
    max_retries=settings.EXPORT_MAX_ATTEMPTS - 1,
)
def generate_export(report_id: str) -> str | None:
    """Build one data export (the same build as any report, under the export time limits, and
    at most EXPORT_MAX_ATTEMPTS tries)."""
    return _generate(report_id)


@shared_task(name="workers.reports.create_weekly_usage_reports", base=LexisTask)
def create_weekly_usage_reports() -> int:
    return len(services.weekly_usage_reports_create())


@shared_task(name="workers.reports.redispatch_stale_reports", base=LexisTask)
def redispatch_stale_reports() -> dict[str, int]:
    """Publish reports whose message was never sent (broker down) or may be lost."""
    return services.reports_redispatch_stale()
