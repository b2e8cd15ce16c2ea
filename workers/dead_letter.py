"""Tasks of the dead_letter queue: store dead letters that could not be written at failure time."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import DatabaseError

from apps.core.services import dead_letter_record


@shared_task(
    name="workers.dead_letter.store",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(DatabaseError,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    # The store itself never gives up: losing it would lose the message.
    max_retries=None,
)
def store(payload: dict[str, Any]) -> str:
    return str(dead_letter_record(**payload).pk)
