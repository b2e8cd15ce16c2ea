from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class DeadLetter(TimeStampedModel):
    """A task message that failed for good: kept with its payload so an operator can requeue it.

    Written by the task base class after the last retry (or when a message keeps killing its
    worker). Rows are never lost silently: they leave only by an operator's requeue or purge.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        REQUEUED = "requeued", "Requeued"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_name = models.CharField(max_length=200, db_index=True)
    task_id = models.CharField(max_length=64, db_index=True)
    queue = models.CharField(max_length=64)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    exception_type = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    request_id = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    requeued_at = models.DateTimeField(null=True, blank=True)
    requeue_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="deadletter_status_created")]
        constraints = [
            # One pending letter per message: two deliveries of one task failing at once would
            # otherwise both insert, and every later record of it raised MultipleObjectsReturned.
            models.UniqueConstraint(
                fields=["task_id"],
                condition=models.Q(status="pending"),
                name="deadletter_one_pending_per_task",
            )
        ]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.task_id}] {self.status}"


class PendingDeletion(models.Model):
    """A stored file that must be deleted: the durable half of `apps.core.storage`.

    Written in the transaction that removes the last row pointing at the file, so the file is
    never forgotten: the row goes only once the storage confirmed the delete (a missing file
    counts as deleted). Failed attempts wait `next_attempt_at` and are retried by the hourly
    retention task.
    """

    key = models.CharField(max_length=500)
    attempts = models.PositiveIntegerField(default=0, help_text="Failed delete attempts.")
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["next_attempt_at"]
        indexes = [models.Index(fields=["next_attempt_at"], name="pendingdeletion_next")]

    def __str__(self) -> str:
        return f"{self.key} (attempts {self.attempts})"
