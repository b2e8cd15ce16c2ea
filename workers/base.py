"""The base class every LexisCore task uses.

Retries are for transient errors only (`TransientError`, connection failures), with exponential
backoff and jitter. When a task fails for good, the message is dead-lettered: stored in the
`DeadLetter` table, or, if the database is unreachable at that moment, sent to the `dead_letter`
queue whose worker stores it when the database is back. Nothing is dropped.
"""

from __future__ import annotations

import logging
import traceback as tb
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject
from django.db import DatabaseError, InterfaceError, OperationalError

from apps.core.context import job_id_var, request_id_var

from .queues import Queue

logger = logging.getLogger(__name__)


class TransientError(Exception):
    """A failure worth retrying (a timeout, a 5xx from a peer, a dropped connection)."""


TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    TransientError,
    OperationalError,
    InterfaceError,
    ConnectionError,
    TimeoutError,
)


class LexisTask(Task):
    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT_EXCEPTIONS
    retry_backoff = 2
    retry_backoff_max = 600
    retry_jitter = True
    max_retries = 5

    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        headers = self.request.headers or {}
        request_id_var.set(headers.get("request_id") or self.request.get("request_id"))
        job_id_var.set(headers.get("job_id") or self.request.get("job_id"))

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any
    ) -> None:
        if isinstance(exc, Ignore | Reject):
            return
        delivery_info = self.request.delivery_info or {}
        payload = {
            "task_name": self.name,
            "task_id": task_id,
            "queue": delivery_info.get("routing_key") or self._queue_name(),
            "args": list(args or ()),
            "kwargs": dict(kwargs or {}),
            "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "error": str(exc),
            "traceback": str(einfo) if einfo else "".join(tb.format_exception(exc)),
            "attempts": (self.request.retries or 0) + 1,
            "request_id": request_id_var.get() or "",
        }
        logger.error(
            "Task %s[%s] failed for good; dead-lettering it", self.name, task_id, exc_info=exc
        )
        dead_letter(payload)

    def _queue_name(self) -> str:
        from lexiscore.celery import route_by_module

        route = route_by_module(self.name, (), {}, {})
        return route["queue"] if route else str(Queue.MAINTENANCE)


def dead_letter(payload: dict[str, Any]) -> None:
    """Store a dead letter now, or hand it to the dead_letter queue when the database is down."""
    from apps.core.services import dead_letter_record

    try:
        dead_letter_record(**payload)
    except DatabaseError:
        from .dead_letter import store

        logger.warning(
            "Database unavailable; sending dead letter %s to its queue", payload["task_id"]
        )
        store.apply_async(kwargs={"payload": payload}, queue=str(Queue.DEAD_LETTER))
