"""The open (ASGI) stream's loop, driven directly: keep-alives, the table poll when there is no
Redis, its end, and the per-process cap. The deployed server is tested in test_stream_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient

from apps.accounts.models import Role
from apps.feed import streams
from apps.feed.services import feed_publish
from tests.factories import bearer, member

pytestmark = pytest.mark.django_db(transaction=True)


def _closing(function):
    """`function` for another thread, closing the connection it opened there."""

    def run() -> None:
        try:
            function()
        finally:
            connections.close_all()

    return run


def collect(access: streams.Access, cursor, *, during: float, then=None) -> list[str]:
    """What the stream sends in `during` seconds; `then()` runs (in a thread) after its start."""

    async def run() -> list[str]:
        chunks: list[str] = []
        stream = streams.live(access, cursor)

        async def read() -> None:
            async for chunk in stream:
                chunks.append(chunk)

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.2)
        if then is not None:
            await sync_to_async(_closing(then), thread_sensitive=False)()
        done, _ = await asyncio.wait({reader}, timeout=during)
        if not done:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await stream.aclose()
        # The stream's queries ran in asgiref's shared thread: close its connection there.
        await sync_to_async(connections.close_all)()
        return chunks

    return asyncio.run(run())


@pytest.fixture
def access():
    owner = member(Role.OWNER)
    return streams.Access.of(
        type(
            "Tenant", (), {"organisation": owner.organisation, "user": owner.user, "api_key": None}
        )
    )


def test_without_redis_the_stream_reads_the_table_every_poll_interval(settings, access):
    settings.REDIS_URL = ""
    settings.FEED_POLL_SECONDS = 0.2
    settings.FEED_HEARTBEAT_SECONDS = 30

    events = []

    def commit_one() -> None:
        events.append(
            feed_publish(organisation_id=access.organisation_id, type="job.queued", data={})
        )

    chunks = collect(access, None, during=1.0, then=commit_one)

    text = "".join(chunks)
    assert text.startswith("retry: 200\nid: 0\n\n")
    assert f"id: {events[0].id}\ndata: " in text


def test_a_quiet_stream_sends_keep_alive_comments(settings, access):
    settings.REDIS_URL = ""
    settings.FEED_POLL_SECONDS = 0.1
    settings.FEED_HEARTBEAT_SECONDS = 0.3

    chunks = collect(access, None, during=1.0)

    assert chunks.count(": keep-alive\n\n") >= 2


def test_the_stream_ends_after_its_time_and_the_process_count_returns_to_zero(settings, access):
    settings.REDIS_URL = ""
    settings.FEED_POLL_SECONDS = 0.1
    settings.FEED_STREAM_SECONDS = 0.5
    started = time.monotonic()

    collect(access, None, during=5.0)

    assert time.monotonic() - started < 3
    assert streams.open_streams() == 0


def test_a_removed_member_loses_the_stream(settings, access):
    from apps.accounts.models import Membership

    settings.REDIS_URL = ""
    settings.FEED_POLL_SECONDS = 0.1
    settings.FEED_ACCESS_RECHECK_SECONDS = 0.2
    started = time.monotonic()

    collect(
        access,
        None,
        during=5.0,
        then=lambda: Membership.objects.filter(user_id=access.user_id).delete(),
    )

    assert time.monotonic() - started < 3


def test_over_the_per_process_cap_the_asgi_stream_is_503(settings):
    settings.FEED_MAX_STREAMS_PER_PROCESS = 0
    owner = member(Role.OWNER)
    headers = {
        "Authorization": bearer(owner.user)["HTTP_AUTHORIZATION"],
        "Accept": "text/event-stream",
    }

    async def get():
        response = await AsyncClient().get("/api/v1/events/stream", headers=headers)
        await sync_to_async(connections.close_all)()
        return response

    response = asyncio.run(get())

    assert response.status_code == 503
    assert response["Retry-After"]
    assert b'"feed_busy"' in response.content


def test_a_busy_organisation_cannot_keep_a_stream_open_past_its_time(settings, access):
    settings.REDIS_URL = ""
    settings.FEED_POLL_SECONDS = 0.1
    settings.FEED_STREAM_SECONDS = 0
    for _ in range(250):
        feed_publish(organisation_id=access.organisation_id, type="job.progress", data={})

    chunks = collect(access, 0, during=5.0)

    # One page, then the stream ended (its time was up) although more events were waiting.
    assert "".join(chunks).count("\ndata: ") == streams.PAGE


def test_a_slot_counts_once_in_the_gauge_however_often_it_is_given_back(settings):
    from prometheus_client import REGISTRY

    def gauge() -> float:
        return REGISTRY.get_sample_value("lexiscore_feed_open_streams") or 0.0

    settings.FEED_MAX_STREAMS_PER_PROCESS = streams.open_streams() + 1
    before = gauge()
    slot, over = streams.Slot(), streams.Slot()

    assert slot.take() is True
    assert over.take() is False  # the cap
    assert gauge() == before + 1
    slot.release()
    slot.release()  # the stream's end and the response's close both give it back

    assert gauge() == before
    assert streams.open_streams() == settings.FEED_MAX_STREAMS_PER_PROCESS - 1
