"""Tasks of the webhooks queue: one try of one delivery, and the beat sweep of due retries.

Retry delays live in `WebhookDelivery.next_attempt_at`; no task here is published with a
countdown, so nothing depends on Redis keeping a delayed message past its visibility timeout.
"""

from __future__ import annotations

from datetime import datetime

from celery import shared_task

from apps.webhooks import services

from .base import LexisTask


@shared_task(name="workers.webhooks.deliver", base=LexisTask)
def deliver(delivery_id: str, due_at: str | None = None) -> str:
    """One try; `due_at`: the mark of the sweep that published it (absent from older messages)."""
    mark = datetime.fromisoformat(due_at) if due_at else None
    return services.delivery_attempt(delivery_id=delivery_id, due_at=mark)


@shared_task(name="workers.webhooks.send_due_deliveries", base=LexisTask, max_retries=0)
def send_due_deliveries() -> int:
    """Publish a try for every delivery whose `next_attempt_at` has come (claimed by the try).

    Returns how many were published; one the broker refused is logged and found again by the
    next sweep, and stops none of the others.
    """
    ids, mark = services.due_deliveries_take()
    return services.deliveries_publish(ids, due_at=mark)
