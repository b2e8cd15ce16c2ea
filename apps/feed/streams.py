"""Server-sent events (text/event-stream) of an organisation's feed.

Two ways to serve the same URL, chosen by the server it runs under:

* ASGI (`lexiscore.asgi`, the `web-events` service): the stream stays open up to
  FEED_STREAM_SECONDS and pushes each event as it is committed. A process keeps one Redis
  subscription for all its streams (`Hub`); a wake-up makes the streams of that organisation read
  the table. Without Redis, or while it is unreachable, they read it every FEED_POLL_SECONDS.
* WSGI (gunicorn's gthread workers, `make run`): a stream would hold a whole worker, so the
  response carries what is there now and ends, with `retry: FEED_POLL_SECONDS`. A browser's
  EventSource reconnects by itself after that, with `Last-Event-ID`: the same client code gets
  the same events, a little later.

Every response starts with `retry:` and `id: <cursor>` (an event with no data only moves the
client's last event id), so a reconnect resumes exactly where the previous response stopped.
Access is checked again every FEED_ACCESS_RECHECK_SECONDS: a removed member, a revoked key or
a signed-out user loses the stream, and the reconnect is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.utils import timezone
from redis.exceptions import RedisError

from apps.core.db import release_connection
from apps.core.metrics import feed_open_streams

from . import selectors
from .models import FeedEvent
from .services import CHANNEL_PREFIX

logger = logging.getLogger(__name__)

PAGE = 100
# A poll-mode response stops after this many events (the client reconnects at once for more).
POLL_MAX_EVENTS = 500
RESET = "feed.reset"


@dataclass(frozen=True)
class Access:
    """Who a stream is for, as it was when the stream was opened."""

    organisation_id: Any
    user_id: Any = None
    token_version: int | None = None
    api_key_id: Any = None

    @classmethod
    def of(cls, tenant: Any) -> Access:
        if tenant.api_key is not None:
            return cls(organisation_id=tenant.organisation.pk, api_key_id=tenant.api_key.pk)
        return cls(
            organisation_id=tenant.organisation.pk,
            user_id=tenant.user.pk,
            token_version=tenant.user.token_version,
        )

    def still_valid(self) -> bool:
        """The caller may still read this organisation's feed (one query)."""
        from django.db.models import Q

        from apps.accounts.models import ApiKey, Membership

        if self.api_key_id is not None:
            return ApiKey.objects.filter(
                Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()),
                pk=self.api_key_id,
                organisation_id=self.organisation_id,
                organisation__is_active=True,
                revoked_at__isnull=True,
            ).exists()
        return Membership.objects.filter(
            user_id=self.user_id,
            organisation_id=self.organisation_id,
            organisation__is_active=True,
            user__is_active=True,
            user__token_version=self.token_version,
        ).exists()


# ---- the text of the stream ---------------------------------------------------------------------
def event_json(event: FeedEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "subject_id": str(event.subject_id) if event.subject_id else None,
        "created_at": event.created_at.isoformat(),
        "data": event.data,
    }


def _message(event_id: int, payload: dict[str, Any]) -> str:
    # json.dumps escapes newlines, so the payload is one `data:` line.
    return f"id: {event_id}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _preamble(cursor: int) -> str:
    return f"retry: {int(settings.FEED_POLL_SECONDS * 1000)}\nid: {cursor}\n\n"


def _open(access: Access, cursor: int | None) -> tuple[str, int]:
    """The first text of a stream and the cursor it continues from."""
    if cursor is None:
        start = selectors.latest_id(organisation_id=access.organisation_id)
        return _preamble(start), start
    page = selectors.feed_read(organisation_id=access.organisation_id, after=cursor, limit=1)
    if not page.reset:
        return _preamble(cursor), cursor
    start = selectors.latest_id(organisation_id=access.organisation_id)
    return _preamble(start) + _message(start, {"type": RESET, "cursor": start}), start


def _read(access: Access, cursor: int) -> tuple[str, int, bool, int]:
    """The events after `cursor` as stream text, the new cursor, whether more are waiting, and
    how many events the text holds."""
    page = selectors.feed_read(organisation_id=access.organisation_id, after=cursor, limit=PAGE)
    text = "".join(_message(event.id, event_json(event)) for event in page.events)
    return text, page.cursor, page.more, len(page.events)


def _released(function: Any, *args: Any) -> Any:
    """`function(*args)`, then `release_connection()`."""
    try:
        return function(*args)
    finally:
        release_connection()


# ---- WSGI: what is there now, then the client reconnects ---------------------------------------
def poll_once(access: Access, cursor: int | None) -> Iterator[str]:
    text, cursor = _open(access, cursor)
    yield text
    sent = 0
    while sent < POLL_MAX_EVENTS:
        text, cursor, more, count = _read(access, cursor)
        if text:
            yield text
            sent += count
        if not more:
            return


# ---- ASGI: one open stream, pushed to -----------------------------------------------------------
class Hub:
    """One Redis subscription per event loop, waking the streams of the organisation named."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task | None = None
        self.connected = False

    def register(self, organisation_id: Any) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(str(organisation_id), set()).add(event)
        if settings.REDIS_URL and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._listen())
        return event

    def unregister(self, organisation_id: Any, event: asyncio.Event) -> None:
        waiters = self._waiters.get(str(organisation_id))
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[str(organisation_id)]

    def _wake(self, organisation_id: str) -> None:
        for event in self._waiters.get(organisation_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        backoff = 0.5
        quiet = settings.FEED_HEARTBEAT_SECONDS
        while True:
            client = aioredis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=None
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                self.connected = True
                backoff = 0.5
                # Wake-ups sent while there was no subscription are lost: every stream reads.
                self._wake_all()
                heard = time.monotonic()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=quiet
                    )
                    if message is not None:
                        heard = time.monotonic()  # a wake-up, or the pong of our ping
                        if message.get("type") == "pmessage":
                            name = message["channel"]
                            name = name.decode() if isinstance(name, bytes) else name
                            self._wake(name.removeprefix(CHANNEL_PREFIX))
                        continue
                    if time.monotonic() - heard > 2 * quiet + 5:
                        # A half-open connection: the ping sent before got no pong.
                        raise ConnectionError("no answer from Redis to the feed's ping")
                    await asyncio.wait_for(pubsub.ping(), timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("Feed subscription to Redis lost; streams poll meanwhile")
            finally:
                self.connected = False
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # noqa: S110 (closing a connection already broken)
                    pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()
_open_streams = 0
_open_lock = threading.Lock()
# The streams' reads, from every stream of the process, in a few threads: a wake-up of a busy
# organisation queues its streams' reads here rather than at the connection pool, whose
# DB_POOL_TIMEOUT would cut them. (The request of each stream also keeps an idle thread of
# Django's ASGI handler for its life.)
_read_threads: ThreadPoolExecutor | None = None


def _reader() -> ThreadPoolExecutor:
    global _read_threads
    if _read_threads is None:
        with _open_lock:
            if _read_threads is None:
                _read_threads = ThreadPoolExecutor(
                    settings.FEED_READ_THREADS, thread_name_prefix="feed-read"
                )
    return _read_threads


async def _in_reader(function: Any, *args: Any) -> Any:
    return await sync_to_async(_released, thread_sensitive=False, executor=_reader())(
        function, *args
    )


def hub() -> Hub:
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = Hub()
    return found


def open_streams() -> int:
    return _open_streams


class Slot:
    """A stream's place under FEED_MAX_STREAMS_PER_PROCESS, taken by the view before it answers
    (so a burst of opens cannot overshoot) and given back once, by the stream's end or by the
    response's close when the body was never started. The stream's `Lease` (its place under
    the per-caller and per-organisation limits), if any, is given back with it."""

    def __init__(self, lease: Lease | None = None) -> None:
        self._held = False
        self.lease = lease

    def take(self) -> bool:
        global _open_streams
        with _open_lock:
            if _open_streams >= settings.FEED_MAX_STREAMS_PER_PROCESS:
                return False
            _open_streams += 1
            self._held = True
        feed_open_streams().inc()
        return True

    def release(self) -> None:
        global _open_streams
        if self.lease is not None:
            self.lease.release()
        with _open_lock:
            if not self._held:
                return
            self._held = False
            _open_streams -= 1
        feed_open_streams().dec()


# ---- streams per caller and per organisation, counted across processes --------------------------
# One sorted set per caller (user or API key) and one per organisation in the shared cache
# (Redis): a member per open stream, scored with its deadline. The stream moves its deadline on
# while it lives (`Lease.refresh`); every take first drops the members whose deadline has passed,
# so the streams of a process that died (SIGKILL, OOM, a lost host) stop counting after at most
# `lease_seconds()`, without anyone giving them back. Redis' own clock scores them: the
# processes' clocks may differ.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local lease = tonumber(ARGV[1])
for i = 1, 2 do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
end
for i = 1, 2 do
    local limit = tonumber(ARGV[2 + i])
    if limit > 0 and redis.call('ZCARD', KEYS[i]) >= limit then
        return i
    end
end
for i = 1, 2 do
    redis.call('ZADD', KEYS[i], now + lease, ARGV[2])
    redis.call('EXPIRE', KEYS[i], math.ceil(lease) + 1)
end
return 0
"""
# A stream whose member was dropped meanwhile (it could not refresh in time) counts again.
_REFRESH = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local lease = tonumber(ARGV[1])
for i = 1, 2 do
    redis.call('ZADD', KEYS[i], now + lease, ARGV[2])
    redis.call('EXPIRE', KEYS[i], math.ceil(lease) + 1)
end
return 0
"""
_STORE_ERRORS = (RedisError, ConnectionError, TimeoutError, OSError)
# After a failure the shared count is skipped this long (as the wake-ups are, `services._wake`):
# with Redis unreachable every open would otherwise wait for a connect timeout. Only the
# per-process cap holds meanwhile.
_PAUSE_AFTER_FAILURE_SECONDS = 5.0
_shared_paused_until = 0.0
_scripts: dict[tuple[int, str], Any] = {}

PRINCIPAL = "principal"
ORGANISATION = "organisation"


def lease_seconds() -> float:
    """How long a stream's place outlives its last refresh. A live stream refreshes it every
    third of this (its loop wakes at least every FEED_HEARTBEAT_SECONDS)."""
    return max(10.0, 3 * settings.FEED_HEARTBEAT_SECONDS)


def _shared_store() -> RedisCache | None:
    """The shared cache, when it is Redis and was not failing a moment ago."""
    if time.monotonic() < _shared_paused_until:
        return None
    store = caches[settings.RATELIMIT_USE_CACHE]
    return store if isinstance(store, RedisCache) else None


def _store_failed(action: str) -> None:
    global _shared_paused_until
    _shared_paused_until = time.monotonic() + _PAUSE_AFTER_FAILURE_SECONDS
    logger.warning(
        "Could not %s a feed stream in the shared count; only the per-process cap holds for %ss",
        action,
        _PAUSE_AFTER_FAILURE_SECONDS,
        exc_info=True,
    )


def _script(client: Any, source: str) -> Any:
    found = _scripts.get((id(client), source))
    if found is None:
        found = _scripts[(id(client), source)] = client.register_script(source)
    return found


class Lease:
    """A stream's place under FEED_MAX_STREAMS_PER_PRINCIPAL (per user or API key) and
    FEED_MAX_STREAMS_PER_ORGANISATION, shared by every process (0: no such limit).

    Fails open: without a Redis cache (embedded mode), or while it cannot be reached, nothing is
    counted and only FEED_MAX_STREAMS_PER_PROCESS holds (logged). Given back once; `release`
    may be called from any thread, the event loop's included (it does not block the loop).
    """

    def __init__(self, access: Access) -> None:
        self.access = access
        self.member = uuid.uuid4().hex
        self._held = False
        self._lock = threading.Lock()

    def _keys(self, store: RedisCache) -> list[str]:
        access = self.access
        principal = (
            f"key:{access.api_key_id}"
            if access.api_key_id is not None
            else f"user:{access.user_id}"
        )
        return [
            store.make_and_validate_key(f"feed:streams:{principal}"),
            store.make_and_validate_key(f"feed:streams:organisation:{access.organisation_id}"),
        ]

    def take(self) -> str | None:
        """None when the stream may open (its place is taken, or nothing is counted); else the
        limit that is reached: PRINCIPAL or ORGANISATION."""
        per_principal = settings.FEED_MAX_STREAMS_PER_PRINCIPAL
        per_organisation = settings.FEED_MAX_STREAMS_PER_ORGANISATION
        if per_principal <= 0 and per_organisation <= 0:
            return None
        store = _shared_store()
        if store is None:
            return None
        try:
            keys = self._keys(store)
            client = store._cache.get_client(keys[0], write=True)
            refused = _script(client, _TAKE)(
                keys=keys,
                args=[lease_seconds(), self.member, per_principal, per_organisation],
            )
        except _STORE_ERRORS:
            _store_failed("count")
            return None
        if refused == 1:
            return PRINCIPAL
        if refused == 2:
            return ORGANISATION
        self._held = True
        return None

    def refresh(self) -> None:
        """Move the deadline on (the stream lives). Blocking: call it off the event loop."""
        if not self._held:
            return
        store = _shared_store()
        if store is None:
            return
        try:
            keys = self._keys(store)
            client = store._cache.get_client(keys[0], write=True)
            _script(client, _REFRESH)(keys=keys, args=[lease_seconds(), self.member])
        except _STORE_ERRORS:
            _store_failed("refresh")

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._forget()
            return
        try:  # on the event loop: a Redis round trip must not hold every stream of the process
            _reader().submit(self._forget)
        except RuntimeError:  # the pool is shut down (the process is ending)
            self._forget()

    def _forget(self) -> None:
        store = _shared_store()
        if store is None:
            return  # its deadline passes without refreshes: it stops counting by itself
        try:
            keys = self._keys(store)
            client = store._cache.get_client(keys[0], write=True)
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, self.member)
            pipe.execute()
        except _STORE_ERRORS:
            _store_failed("give back")


async def live(access: Access, cursor: int | None, slot: Slot | None = None) -> AsyncIterator[str]:
    if slot is None:
        slot = Slot()
        slot.take()
    feed = hub()
    woken = feed.register(access.organisation_id)
    clock = time.monotonic
    lease = slot.lease
    refresh_every = lease_seconds() / 3
    try:
        text, cursor = await _in_reader(_open, access, cursor)
        yield text
        last_write = clock()
        closes_at = last_write + settings.FEED_STREAM_SECONDS
        recheck_at = last_write + settings.FEED_ACCESS_RECHECK_SECONDS
        refresh_at = last_write + refresh_every
        while True:
            text, cursor, more, _ = await _in_reader(_read, access, cursor)
            if text:
                yield text
                last_write = clock()
            now = clock()
            if now >= closes_at:
                return  # the client reconnects (retry) and is authenticated again
            if now >= recheck_at:
                if not await _in_reader(access.still_valid):
                    return
                recheck_at = now + settings.FEED_ACCESS_RECHECK_SECONDS
            if lease is not None and now >= refresh_at:
                await _in_reader(lease.refresh)
                refresh_at = now + refresh_every
            if more:
                continue
            wait = settings.FEED_HEARTBEAT_SECONDS if feed.connected else settings.FEED_POLL_SECONDS
            wait = max(0.0, min(wait, closes_at - now, recheck_at - now, refresh_at - now))
            try:
                await asyncio.wait_for(woken.wait(), timeout=wait)
            except TimeoutError:
                if clock() - last_write >= settings.FEED_HEARTBEAT_SECONDS:
                    yield ": keep-alive\n\n"
                    last_write = clock()
            woken.clear()
    finally:
        feed.unregister(access.organisation_id, woken)
        slot.release()
