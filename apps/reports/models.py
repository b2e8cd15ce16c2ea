"""Generated reports: a transcript report of one job, an organisation usage report, or a data
export (a ZIP of everything an organisation, or one member, holds: apps.reports.exports)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.core.generations import GenerationalCache, InvalidatingQuerySet
from apps.core.models import TimeStampedModel

# Rendered report lists per organisation (apps.core.generations).
READ_CACHE = GenerationalCache("reports:v1", timeout_setting="API_READ_CACHE_SECONDS")


class ReportQuerySet(InvalidatingQuerySet):
    generational_cache = READ_CACHE
    scope_field = "organisation_id"


class ReportKind(models.TextChoices):
    TRANSCRIPT = "transcript", "Transcript report"
    USAGE = "usage", "Organisation usage report"
    EXPORT = "export", "Data export"


class ReportFormat(models.TextChoices):
    PDF = "pdf", "PDF"
    JSON = "json", "JSON"
    CSV = "csv", "CSV"
    XLSX = "xlsx", "XLSX"
    ZIP = "zip", "ZIP"


class ExportScope(models.TextChoices):
    """What a data export holds: everything of the organisation (owners and admins), or what
    the organisation holds about the member who asked for it (any member, for themselves)."""

    ORGANISATION = "organisation", "Organisation"
    MEMBER = "member", "Member"


FORMATS_OF_KIND = {
    ReportKind.TRANSCRIPT: {ReportFormat.PDF, ReportFormat.JSON, ReportFormat.CSV},
    ReportKind.USAGE: {ReportFormat.CSV, ReportFormat.XLSX, ReportFormat.PDF},
    ReportKind.EXPORT: {ReportFormat.ZIP},
}
CONTENT_TYPES = {
    ReportFormat.PDF: "application/pdf",
    ReportFormat.JSON: "application/json",
    ReportFormat.CSV: "text/csv; charset=utf-8",
    ReportFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ReportFormat.ZIP: "application/zip",
}


class ReportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


# A report in these states still needs a worker (the claim and the sweeper accept both: a worker
# that died leaves its report `running`).
PENDING_STATUSES = (ReportStatus.QUEUED, ReportStatus.RUNNING)


class Report(TimeStampedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="reports"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reports",
    )
    kind = models.CharField(max_length=16, choices=ReportKind.choices)
    format = models.CharField(max_length=8, choices=ReportFormat.choices)
    job = models.ForeignKey(
        "audio_jobs.TranscriptionJob",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="reports",
    )
    period_start = models.DateField(null=True, blank=True)
    period_end = models.DateField(null=True, blank=True, help_text="Exclusive.")
    scheduled = models.BooleanField(default=False, help_text="The weekly usage report.")
    status = models.CharField(
        max_length=16, choices=ReportStatus.choices, default=ReportStatus.QUEUED
    )
    attempts = models.PositiveIntegerField(default=0)
    # Set when the report failed for good: `invalid_input`, `generation_failed` or
    # `too_many_attempts` (the worker stopped during every try, e.g. killed for memory).
    # db_default: the release before it inserts reports without the column while this one migrates.
    error_code = models.CharField(max_length=64, blank=True, db_default="")
    error_message = models.TextField(blank=True)
    # When its task was last published; null: never (the broker was down), so the sweeper
    # publishes it (services.reports_redispatch_stale).
    dispatched_at = models.DateTimeField(null=True, blank=True)
    file_key = models.CharField(max_length=500, blank=True)
    filename = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    generation_seconds = models.FloatField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Data exports only (empty / False / null for other kinds).
    export_scope = models.CharField(
        max_length=16, choices=ExportScope.choices, blank=True, db_default=""
    )
    include_audio = models.BooleanField(default=False, db_default=False)
    # When a ready export's file and row are deleted (EXPORT_RETENTION_DAYS after it was built);
    # `reports_delete_expired` (the hourly retention task) deletes it.
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = ReportQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["organisation", "-created_at", "-id"], name="report_org_created_id"
            ),
            # The sweeper's scan of reports still waiting for a worker.
            models.Index(
                fields=["status", "updated_at"],
                name="report_pending",
                condition=Q(status__in=["queued", "running"]),
            ),
            # The retention sweep's scan of expired exports.
            models.Index(
                fields=["expires_at"], name="report_expiry", condition=Q(expires_at__isnull=False)
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "period_start", "period_end", "format"],
                condition=Q(scheduled=True),
                name="report_one_scheduled_per_period",
            ),
            # One export in progress per requester (member scope) and one organisation export per
            # organisation (409 `export_in_progress`): an export reads a lot, for minutes or
            # hours. Apart, so that no member (a viewer) can hold off the owners' and admins'.
            models.UniqueConstraint(
                fields=["organisation", "created_by"],
                condition=Q(kind="export", export_scope="member", status__in=["queued", "running"]),
                name="report_one_pending_member_export",
            ),
            models.UniqueConstraint(
                fields=["organisation"],
                condition=Q(
                    kind="export", export_scope="organisation", status__in=["queued", "running"]
                ),
                name="report_one_pending_org_export",
            ),
        ]

    def __str__(self) -> str:
        return f"Report {self.id} ({self.kind}, {self.status})"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[ReportFormat(self.format)]
