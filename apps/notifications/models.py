"""Per-user choices about non-essential email (account and security mail is always sent), and
the outbox of emails waiting to be sent."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q


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


class EmailStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class EmailOutbox(models.Model):
    """One email to send, written in the transaction that decided to send it.

    The row is the durable record: the task published after commit is only a fast path. A beat
    sweep republishes every pending row whose `next_try_at` has come (a publish lost to a broker
    blip, a worker killed mid-send, a try that failed transiently), so a committed email is sent
    even when the broker was briefly down. `claimed_until` keeps two messages for the same row
    from sending it twice at once; a non-empty `dedupe_key` is unique, so the same email is queued
    once (sent rows are purged after `workers.emails.DEDUPE_SECONDS`).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    template = models.CharField(max_length=64)
    recipients = models.JSONField(default=list)
    context = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    dedupe_key = models.CharField(max_length=200, blank=True)
    status = models.CharField(
        max_length=16, choices=EmailStatus.choices, default=EmailStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0, help_text="Tries that claimed the row.")
    next_try_at = models.DateTimeField(
        help_text="When the sweep publishes the row again if it is still pending."
    )
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A try in flight holds the row until then."
    )
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "queued email"
        verbose_name_plural = "email outbox"
        indexes = [
            models.Index(
                fields=["next_try_at"], name="email_outbox_due", condition=Q(status="pending")
            ),
            models.Index(fields=["sent_at"], name="email_outbox_sent", condition=Q(status="sent")),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["dedupe_key"], condition=~Q(dedupe_key=""), name="email_outbox_dedupe"
            ),
        ]

    def __str__(self) -> str:
        return f"Email {self.template} to {', '.join(self.recipients)} ({self.status})"
