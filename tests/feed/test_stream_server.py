"""The stream as deployed: gunicorn with uvicorn's ASGI worker (the `web-events` service),
production settings, a Redis of its own. Events are committed by this test process, as a
transcription worker commits them, and must reach the open stream through the Redis wake-up.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.feed.services import feed_publish
from tests.factories import ApiKeyFactory
from tests.support.processes import GunicornServer, RedisServer, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Longer than any wait below: an event that arrives in time came through the wake-up, not a poll.
HEARTBEAT = 30
STREAM_SECONDS = 8


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer(appendonly=False).start()
    yield server
    server.kill()


def start_server(redis_server: RedisServer, **env: str) -> GunicornServer:
    return GunicornServer(
        database_name=connection.settings_dict["NAME"],
        redis_url=redis_server.url,
        workers=1,
        app="lexiscore.asgi:application",
        env={
            "GUNICORN_WORKER_CLASS": "uvicorn_worker.UvicornWorker",
            "FEED_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "FEED_POLL_SECONDS": str(HEARTBEAT),
            "FEED_STREAM_SECONDS": str(STREAM_SECONDS),
            "FEED_ACCESS_RECHECK_SECONDS": "1",
            "LOG_LEVEL": "WARNING",
            **env,
        },
    ).start()


@pytest.fixture
def events_server(redis_server, settings):
    settings.REDIS_URL = redis_server.url
    server = start_server(redis_server)
    yield server
    server.kill()


class Stream:
    """An open text/event-stream response, read message by message."""

    def __init__(self, server: GunicornServer, key: ApiKey, last_event_id: str | None = None):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        headers = {"Authorization": f"Api-Key {key.raw_key}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", "/api/v1/events/stream", headers=headers)
        self.response = self.connection.getresponse()

    def next(self, timeout: float) -> dict | None:
        """The next message's fields (comments skipped); None when the server ended the stream."""
        self.connection.sock.settimeout(timeout)
        fields: dict = {}
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if line == "":
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value

    def close(self) -> None:
        self.connection.close()


def subscribed(redis_server: RedisServer) -> bool:
    return redis_server.client().execute_command("PUBSUB", "NUMPAT") > 0


def test_an_open_stream_gets_a_committed_event_through_the_wake_up(events_server, redis_server):
    key = ApiKeyFactory()
    stream = Stream(events_server, key)
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("Content-Type").startswith("text/event-stream")
        assert stream.next(timeout=10) == {"retry": str(HEARTBEAT * 1000), "id": "0"}
        wait_for(lambda: subscribed(redis_server), timeout=10, what="the stream's subscription")

        started = time.monotonic()
        event = feed_publish(organisation_id=key.organisation_id, type="job.queued", data={})
        message = stream.next(timeout=10)

        assert message["id"] == str(event.id)
        assert message["data"]["type"] == "job.queued"
        assert time.monotonic() - started < 5  # pushed, not found by a poll 30 s later
    finally:
        stream.close()


def test_a_stream_ends_on_time_and_the_reconnect_misses_nothing(events_server, redis_server):
    key = ApiKeyFactory()
    first = Stream(events_server, key)
    try:
        cursor = first.next(timeout=10)["id"]
        assert first.next(timeout=STREAM_SECONDS + 5) is None  # ended by the server
    finally:
        first.close()
    # Committed while the client was away.
    missed = feed_publish(organisation_id=key.organisation_id, type="job.failed", data={})

    second = Stream(events_server, key, last_event_id=cursor)
    try:
        assert second.next(timeout=10) == {"retry": str(HEARTBEAT * 1000), "id": cursor}
        assert second.next(timeout=10)["id"] == str(missed.id)
    finally:
        second.close()


def test_revoking_the_key_ends_its_open_stream(events_server):
    key = ApiKeyFactory()
    stream = Stream(events_server, key)
    try:
        stream.next(timeout=10)
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())

        started = time.monotonic()
        assert stream.next(timeout=10) is None
        assert time.monotonic() - started < 5  # FEED_ACCESS_RECHECK_SECONDS=1, not the 8 s end
    finally:
        stream.close()
    again = Stream(events_server, key)
    try:
        assert again.response.status == 401
    finally:
        again.close()


def test_many_streams_share_a_pool_of_two_database_connections(redis_server, settings):
    """200 streams opened at once on a pool of two: each stream checks a connection out only for
    its reads (the view hands its own back before the stream starts), so none is refused with
    503 database_unavailable and each gets the event."""
    settings.REDIS_URL = redis_server.url
    server = start_server(
        redis_server,
        DB_POOL_MIN_SIZE="1",
        DB_POOL_MAX_SIZE="2",
        DB_POOL_TIMEOUT="1",
        # One API key holds them all here (test_stream_limits.py tests these limits).
        FEED_MAX_STREAMS_PER_PRINCIPAL="0",
        FEED_MAX_STREAMS_PER_ORGANISATION="0",
    )
    key = ApiKeyFactory()
    try:
        with ThreadPoolExecutor(40) as pool:
            opened = list(pool.map(lambda _: Stream(server, key), range(200)))
        assert sorted({stream.response.status for stream in opened}) == [200]
        for stream in opened:
            assert stream.next(timeout=10)["id"] == "0"  # started, at the newest event (none)
        event = feed_publish(organisation_id=key.organisation_id, type="job.queued", data={})
        for stream in opened:
            assert stream.next(timeout=10)["id"] == str(event.id)
    finally:
        for stream in opened:
            stream.close()
        server.kill()


def test_an_event_committed_while_redis_was_down_arrives_once_it_is_back(
    events_server, redis_server
):
    key = ApiKeyFactory()
    stream = Stream(events_server, key)
    try:
        assert stream.next(timeout=10)["id"] == "0"
        wait_for(lambda: subscribed(redis_server), timeout=10, what="the stream's subscription")
        redis_server.kill()
        # Committed while the wake-up cannot be sent (the publish fails, quietly).
        event = feed_publish(organisation_id=key.organisation_id, type="job.failed", data={})
        redis_server.start()
        started = time.monotonic()

        message = stream.next(timeout=20)

        assert message["id"] == str(event.id)
        # The subscription came back and woke every stream, well before a 30 s poll.
        assert time.monotonic() - started < 15
    finally:
        stream.close()


def test_a_callers_streams_are_limited_and_a_killed_servers_free_themselves(redis_server, settings):
    """FEED_MAX_STREAMS_PER_PRINCIPAL over the deployed server; its count lives in Redis, so a
    server killed with its streams open gives nothing back: their places lapse with the lease."""
    settings.REDIS_URL = redis_server.url
    # The lease is max(10, 3 x heartbeat) = 15 s.
    limits = {"FEED_MAX_STREAMS_PER_PRINCIPAL": "2", "FEED_HEARTBEAT_SECONDS": "5"}
    key = ApiKeyFactory()
    opened: list[Stream] = []

    def status_of_one_more() -> int:
        stream = Stream(server, key)
        stream.close()
        return stream.response.status

    server = start_server(redis_server, **limits)
    try:
        opened = [Stream(server, key) for _ in range(2)]
        refused = Stream(server, key)
        body = json.loads(refused.response.read())
        refused.close()
        assert [stream.response.status for stream in opened] == [200, 200]
        assert refused.response.status == 429
        assert body["error"]["code"] == "feed_streams_limit"
        assert int(refused.response.getheader("Retry-After")) == 15
    finally:
        server.kill()  # SIGKILL: its two streams are never given back
        killed_at = time.monotonic()
        for stream in opened:
            stream.close()
    server = start_server(redis_server, **limits)
    try:
        if time.monotonic() - killed_at < 10:
            assert status_of_one_more() == 429  # still counted
        wait_for(lambda: status_of_one_more() == 200, timeout=30, what="the lapsed places")
        assert time.monotonic() - killed_at < 25
    finally:
        server.kill()
