"""Streams per caller (user or API key) and per organisation, counted across processes in Redis:
one caller cannot take every stream a process holds, a dead process's streams stop counting, and
without Redis only the per-process cap holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncRequestFactory
from redis.exceptions import ConnectionError as RedisConnectionError

from apps.accounts.models import Role
from apps.feed import streams
from apps.feed.api.views import FeedStreamView
from tests.factories import ApiKeyFactory, api_key_header, bearer, member

pytestmark = pytest.mark.django_db(transaction=True)


def open_asgi(headers: dict[str, str]):
    """The stream endpoint as the ASGI server calls it; the response is held, never read."""
    request = AsyncRequestFactory().get("/api/v1/events/stream", headers=headers)
    return FeedStreamView.as_view()(request, version="v1")


def auth(user) -> dict[str, str]:
    return {"Authorization": bearer(user)["HTTP_AUTHORIZATION"]}


def access_of(membership) -> streams.Access:
    return streams.Access(
        organisation_id=membership.organisation.pk,
        user_id=membership.user.pk,
        token_version=membership.user.token_version,
    )


@pytest.fixture
def held():
    """Responses a test keeps open; closed (places given back) at its end."""
    responses: list = []
    yield responses
    for response in responses:
        response.close()


def test_one_caller_cannot_take_every_stream_of_a_process(settings, held):
    settings.FEED_MAX_STREAMS_PER_PROCESS = streams.open_streams() + 5
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 3
    attacker, victim = member(Role.VIEWER), member(Role.VIEWER)

    for _ in range(3):
        held.append(open_asgi(auth(attacker.user)))
        assert held[-1].status_code == 200
    refused = open_asgi(auth(attacker.user))
    held.append(open_asgi(auth(victim.user)))

    assert refused.status_code == 429
    assert refused.data["error"]["code"] == "feed_streams_limit"
    assert refused.data["error"]["details"]["per"] == "principal"
    assert int(refused["Retry-After"]) >= 1
    assert held[-1].status_code == 200  # another organisation's viewer still gets a stream
    # The refused open gave its per-process slot back.
    assert streams.open_streams() == settings.FEED_MAX_STREAMS_PER_PROCESS - 5 + 4


def test_a_closed_stream_gives_its_place_back(settings, held):
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 1
    viewer = member(Role.VIEWER)

    first = open_asgi(auth(viewer.user))
    assert open_asgi(auth(viewer.user)).status_code == 429
    first.close()  # the client left before the body started
    held.append(open_asgi(auth(viewer.user)))

    assert first.status_code == 200
    assert held[-1].status_code == 200


def test_an_organisation_is_limited_over_all_its_users_and_keys(settings, held):
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 5
    settings.FEED_MAX_STREAMS_PER_ORGANISATION = 2
    owner = member(Role.OWNER)
    colleague = member(Role.VIEWER, organisation=owner.organisation)
    key = ApiKeyFactory(organisation=owner.organisation)
    outsider = member(Role.VIEWER)

    held.append(open_asgi(auth(owner.user)))
    held.append(open_asgi({"Authorization": api_key_header(key)["HTTP_AUTHORIZATION"]}))
    refused = open_asgi(auth(colleague.user))
    held.append(open_asgi(auth(outsider.user)))

    assert [r.status_code for r in held] == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.data["error"]["details"] == {
        "limit": 2,
        "per": "organisation",
        "retry_after_seconds": int(refused["Retry-After"]),
    }


def test_an_api_key_counts_apart_from_the_users_of_its_organisation(settings):
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 1
    owner = member(Role.OWNER)
    key = ApiKeyFactory(organisation=owner.organisation)
    user_lease = streams.Lease(access_of(owner))
    key_lease = streams.Lease(
        streams.Access(organisation_id=owner.organisation.pk, api_key_id=key.pk)
    )

    assert user_lease.take() is None
    assert key_lease.take() is None
    assert streams.Lease(access_of(owner)).take() == streams.PRINCIPAL
    user_lease.release()
    key_lease.release()


def test_the_places_of_a_process_that_died_stop_counting(settings, monkeypatch):
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 1
    monkeypatch.setattr(streams, "lease_seconds", lambda: 0.4)
    viewer = member(Role.VIEWER)

    alive = streams.Lease(access_of(viewer))
    assert alive.take() is None
    for _ in range(3):  # refreshed, it keeps counting past its first deadline
        time.sleep(0.2)
        alive.refresh()
    assert streams.Lease(access_of(viewer)).take() == streams.PRINCIPAL
    # Its process is killed: never released, never refreshed again.
    time.sleep(0.5)
    successor = streams.Lease(access_of(viewer))

    assert successor.take() is None
    successor.release()


def test_an_open_stream_refreshes_its_place_and_gives_it_back_at_its_end(settings, monkeypatch):
    settings.REDIS_URL = ""
    settings.FEED_POLL_SECONDS = 0.05
    settings.FEED_HEARTBEAT_SECONDS = 30
    settings.FEED_STREAM_SECONDS = 1.2
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 1
    monkeypatch.setattr(streams, "lease_seconds", lambda: 0.4)
    viewer = member(Role.VIEWER)
    access = access_of(viewer)
    seen: list = []

    async def run() -> None:
        lease = streams.Lease(access)
        slot = streams.Slot(lease)
        assert slot.take() and lease.take() is None
        stream = streams.live(access, None, slot)

        async def read() -> None:
            async for _chunk in stream:
                pass

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.9)  # more than twice the lease: only refreshes keep it counted
        seen.append(await sync_to_async(streams.Lease(access).take)())
        await asyncio.wait({reader}, timeout=5)
        with contextlib.suppress(asyncio.CancelledError):
            reader.cancel()
            await reader
        await stream.aclose()
        await sync_to_async(connections.close_all)()

    asyncio.run(run())
    # The stream's end gave the place back (off the event loop, in the read threads).
    after = streams.Lease(access)
    for _ in range(50):
        if after.take() is None:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the stream's place was not given back")
    after.release()

    assert seen == [streams.PRINCIPAL]


def test_poll_mode_holds_a_place_only_while_it_answers(client, settings):
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 1
    viewer = member(Role.VIEWER)
    headers = {**bearer(viewer.user), "HTTP_ACCEPT": "text/event-stream"}

    for _ in range(3):  # each response read to its end (and closed): its place is given back
        response = client.get("/api/v1/events/stream", **headers)
        assert response.status_code == 200
        b"".join(response.streaming_content)

    other = streams.Lease(access_of(viewer))
    assert other.take() is None  # e.g. an ASGI stream of the same user
    refused = client.get("/api/v1/events/stream", **headers)
    other.release()

    assert refused.status_code == 429
    assert json.loads(refused.content)["error"]["code"] == "feed_streams_limit"


def test_without_redis_the_streams_are_not_counted_and_it_is_logged(
    settings, monkeypatch, caplog, held
):
    settings.FEED_MAX_STREAMS_PER_PRINCIPAL = 1
    viewer = member(Role.VIEWER)
    monkeypatch.setattr(streams, "_shared_paused_until", 0.0)

    def unreachable(*_args):
        raise RedisConnectionError("down")

    monkeypatch.setattr(streams, "_script", unreachable)
    with caplog.at_level(logging.WARNING, logger="apps.feed.streams"):
        held.append(open_asgi(auth(viewer.user)))
        held.append(open_asgi(auth(viewer.user)))  # paused: not even tried

    assert [r.status_code for r in held] == [200, 200]
    assert len([r for r in caplog.records if "per-process cap" in r.getMessage()]) == 1


def test_the_per_process_cap_still_answers_503_first(settings):
    settings.FEED_MAX_STREAMS_PER_PROCESS = 0
    viewer = member(Role.VIEWER)

    response = open_asgi(auth(viewer.user))

    assert response.status_code == 503
    assert response.data["error"]["code"] == "feed_busy"
