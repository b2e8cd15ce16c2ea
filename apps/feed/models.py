"""The live feed: what happened to an organisation's jobs and reports, in order.

One row per event, written in the transaction that made the change (a rolled-back change is
never announced, a committed one always is). The id is the feed's cursor: a client that reads
events after id N, or reconnects with `Last-Event-ID: N`, misses nothing that is still kept
(`FEED_RETENTION_HOURS`).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class FeedEventType(models.TextChoices):
    JOB_QUEUED = "job.queued", "Job queued"
    JOB_PROCESSING = "job.processing", "Job processing"
    JOB_PROGRESS = "job.progress", "Job progress"
    JOB_COMPLETED = "job.completed", "Job completed"
    JOB_FAILED = "job.failed", "Job failed"
    JOB_CANCELLED = "job.cancelled", "Job cancelled"
    JOB_DELETED = "job.deleted", "Job deleted"
    TRANSCRIPT_EDITED = "transcript.edited", "Transcript edited"
    TRANSCRIPT_REVERTED = "transcript.reverted", "Transcript reverted"
    REPORT_READY = "report.ready", "Report ready"
    REPORT_FAILED = "report.failed", "Report failed"


class FeedEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    # No index of its own: `feed_org_id` starts with it.
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    type = models.CharField(max_length=32, choices=FeedEventType.choices)
    # The job or report the event is about (no foreign key: `job.deleted` outlives its job).
    subject_id = models.UUIDField(null=True, blank=True)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["organisation", "id"], name="feed_org_id")]

    def __str__(self) -> str:
        return f"Feed event {self.id} {self.type}"
