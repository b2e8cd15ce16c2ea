"""Webhook endpoints of an organisation and the deliveries made to them.

A delivery's retry schedule lives in `next_attempt_at` (a beat task sends the due ones), never in
long Celery countdowns: Redis would redeliver a message whose countdown outlives its visibility
timeout.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.core.crypto import EncryptedCharField
from apps.core.models import TimeStampedModel


class EventType(models.TextChoices):
    JOB_COMPLETED = "job.completed", "Job completed"
    JOB_FAILED = "job.failed", "Job failed"
    REPORT_READY = "report.ready", "Report ready"
    REPORT_FAILED = "report.failed", "Report failed"
    TEST = "webhook.test", "Test event"


SUBSCRIBABLE_EVENTS = [e for e in EventType.values if e != EventType.TEST]


class WebhookEndpoint(TimeStampedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(default=list)
    # The signing key must be usable to sign, so it is stored, encrypted at rest (never returned
    # after creation or rotation). The previous secret also signs until
    # `previous_secret_expires_at`. 255 fits the ciphertext of a 100-character secret (238).
    secret = EncryptedCharField(max_length=255)
    previous_secret = EncryptedCharField(max_length=255, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=200, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organisation", "is_active"], name="webhook_org_active")]

    def __str__(self) -> str:
        return f"Webhook endpoint {self.id} ({self.url})"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class WebhookDelivery(TimeStampedModel):
    """One event for one endpoint. `event_id` is the `webhook-id` header, the same every try (and
    every redelivery: receivers deduplicate on it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # Sent again by hand (`delivery_redeliver`): how often, and when last. `attempts` then counts
    # the tries since; the log keeps every try. db_default: the release before inserts rows
    # without it during a rolling upgrade; no CHECK (a PositiveIntegerField's), which PostgreSQL
    # would validate by scanning every delivery under the table's lock.
    redeliveries = models.IntegerField(default=0, db_default=0)
    redelivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["endpoint", "-created_at", "-id"], name="delivery_endpoint_created_id"
            ),
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due",
                condition=Q(status="pending"),
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event_id"], name="delivery_unique_event"),
        ]

    def __str__(self) -> str:
        return f"Delivery {self.event_id} to {self.endpoint_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One HTTP try of a delivery (the customer-visible log: status and error, never a body)."""

    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="log")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["attempted_at", "id"]

    def __str__(self) -> str:
        return f"Try of {self.delivery_id} at {self.attempted_at} ({self.status_code})"
