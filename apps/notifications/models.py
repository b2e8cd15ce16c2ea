"""Per-user choices about non-essential email (account and security mail is always sent)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class NotificationKind(models.TextChoices):
    JOB = "job", "Job completed / failed"
    REPORT = "report", "Report ready"
    WEEKLY_USAGE = "weekly_usage", "Weekly usage report"
    WEBHOOK_ALERTS = "webhook_alerts", "Webhook endpoint disabled"


class NotificationPreference(models.Model):
    """One row per user who changed a default; no row means every kind is on."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="notification_preference",
    )
    job = models.BooleanField(default=True)
    report = models.BooleanField(default=True)
    weekly_usage = models.BooleanField(default=True)
    webhook_alerts = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Notification preferences of {self.user_id}"
