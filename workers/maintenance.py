"""Routine tasks on the maintenance queue."""

from __future__ import annotations

from celery import shared_task

from .base import LexisTask


@shared_task(name="workers.maintenance.ping", base=LexisTask, max_retries=0)
def ping() -> str:
    """A canary: proves a worker consumes the maintenance queue."""
    return "pong"
