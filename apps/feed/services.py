"""Writing the live feed: an event per change, in the change's own transaction.

After the commit, a Redis message on the organisation's channel wakes the streams open on it
(`apps.feed.streams`). The wake-up is only a hint: a stream that misses it (Redis restarting)
still reads the event on its next poll, from the table, so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .models import FeedEvent

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "lexiscore:feed:"
_client_lock = threading.Lock()
_clients: dict[str, Any] = {}


def channel(organisation_id: Any) -> str:
    return f"{CHANNEL_PREFIX}{organisation_id}"


# The first key of the two-int advisory locks that order an organisation's events (the job and
# report leases use the one-bigint form, a separate key space).
ORDER_LOCK_NAMESPACE = 0x4C584644  # "LXFD"


def _order_lock(organisation_id: Any) -> None:
    """Hold the organisation's event-order lock until this transaction ends.

    Ids come from one sequence, but transactions commit in their own order: without the lock a
    reader could see event 12 committed, move its cursor past it, and never see event 11 that
    committed a moment later. Taken right before the insert, the lock makes the next transaction
    of the organisation wait for this one's commit before it draws its id, so within one
    organisation ids become visible in order. SQLite (embedded mode) serialises writers anyway.
    """
    if connection.vendor != "postgresql":
        return
    key = int.from_bytes(uuid.UUID(str(organisation_id)).bytes[:4], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ORDER_LOCK_NAMESPACE, key])


def feed_publish(
    *, organisation_id: Any, type: str, subject_id: Any = None, data: dict[str, Any]
) -> FeedEvent:
    """Record `type` for the organisation; its streams are woken after the commit.

    Call it inside the transaction of the change, as late in it as possible: the organisation's
    other changes wait at this point for this transaction to end.
    """
    with transaction.atomic():
        _order_lock(organisation_id)
        event = FeedEvent.objects.create(
            organisation_id=organisation_id, type=type, subject_id=subject_id, data=data
        )

    def wake_streams() -> None:
        _wake(organisation_id, event.pk)

    transaction.on_commit(wake_streams, robust=True)
    return event


def _redis(url: str) -> Any:
    """One client (and connection pool) per URL and process."""
    client = _clients.get(url)
    if client is None:
        import redis

        with _client_lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(
                    url, socket_connect_timeout=0.5, socket_timeout=0.5
                )
    return client


# After a failed publish, wake-ups are skipped this long: with Redis unreachable every commit
# would otherwise wait for a connect timeout (the streams poll the table meanwhile).
_PAUSE_AFTER_FAILURE_SECONDS = 5.0
_paused_until = 0.0


def _wake(organisation_id: Any, event_id: int) -> None:
    global _paused_until
    if not settings.REDIS_URL:
        return  # embedded mode: streams poll the table (FEED_POLL_SECONDS)
    if time.monotonic() < _paused_until:
        return
    try:
        _redis(settings.REDIS_URL).publish(channel(organisation_id), str(event_id))
    except Exception:
        # Best effort: the streams find the event on their next poll of the table.
        _paused_until = time.monotonic() + _PAUSE_AFTER_FAILURE_SECONDS
        logger.warning("Could not wake the feed of %s", organisation_id, exc_info=True)


def feed_prune(*, now=None, batch: int = 5000) -> int:
    """Delete events older than FEED_RETENTION_HOURS, in batches (short transactions)."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.FEED_RETENTION_HOURS)
    deleted = 0
    while True:
        ids = list(
            FeedEvent.objects.filter(created_at__lt=cutoff)
            .order_by("id")
            .values_list("id", flat=True)[:batch]
        )
        if not ids:
            return deleted
        deleted += FeedEvent.objects.filter(id__in=ids).delete()[0]
