"""The live feed over the API: what is written, who reads it, cursors, tickets, poll-mode SSE."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs import services as job_services
from apps.audio_jobs.models import JobStatus
from apps.feed.models import FeedEvent
from apps.feed.services import feed_prune, feed_publish
from tests.audio_jobs.factories import JobFactory
from tests.factories import (
    ApiKeyFactory,
    MembershipFactory,
    OrganisationFactory,
    api_key_header,
    bearer,
    member,
)

pytestmark = pytest.mark.django_db


def publish(organisation, n: int = 1, type: str = "job.queued") -> list[FeedEvent]:
    return [
        feed_publish(organisation_id=organisation.pk, type=type, data={"n": i}) for i in range(n)
    ]


def read(client, auth, **query):
    return client.get("/api/v1/events", query, **auth)


def sse_messages(response) -> list[dict]:
    """The messages of an event-stream body: each a dict of its fields (data parsed as JSON)."""
    text = b"".join(response.streaming_content).decode()
    messages = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name == "data":
                value = json.loads(value)
            fields[name] = value
        if fields:
            messages.append(fields)
    return messages


# ---- what is written --------------------------------------------------------------------------
def test_a_jobs_changes_are_announced_in_order_with_its_data(client):
    owner = member(Role.OWNER)
    job = JobFactory(organisation=owner.organisation, status=JobStatus.QUEUED)
    job_services.job_cancel(job=job)
    failed = JobFactory(organisation=owner.organisation, status=JobStatus.FAILED, audio_key="a")
    job_services.job_retry(job=failed)
    job_services.job_delete(job=failed)

    body = read(client, bearer(owner.user), after=0).json()

    assert [(e["type"], e["subject_id"]) for e in body["results"]] == [
        ("job.cancelled", str(job.pk)),
        ("job.queued", str(failed.pk)),
        ("job.deleted", str(failed.pk)),
    ]
    cancelled = body["results"][0]["data"]
    assert cancelled["job_id"] == str(job.pk)
    assert cancelled["status"] == "cancelled"
    assert cancelled["job_url"].endswith(f"/api/v1/jobs/{job.pk}")


def test_a_rolled_back_change_announces_nothing(django_capture_on_commit_callbacks):
    owner = member(Role.OWNER)
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        publish(owner.organisation)
        raise RuntimeError("the change fails")

    assert not FeedEvent.objects.exists()
    assert callbacks == []


def test_the_wake_up_is_sent_after_the_commit_and_a_redis_failure_loses_nothing(
    settings, django_capture_on_commit_callbacks
):
    owner = member(Role.OWNER)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        event = publish(owner.organisation)[0]

    assert [c.__qualname__ for c in callbacks] == ["feed_publish.<locals>.wake_streams"]
    assert FeedEvent.objects.filter(pk=event.pk).exists()


# ---- reading it -------------------------------------------------------------------------------
def test_cursor_reads_return_each_event_once_in_order(client):
    owner = member(Role.VIEWER)
    events = publish(owner.organisation, 5)
    auth = bearer(owner.user)

    first = read(client, auth, after=0, limit=3).json()
    second = read(client, auth, after=first["cursor"], limit=3).json()
    third = read(client, auth, after=second["cursor"]).json()

    assert [e["id"] for e in first["results"]] == [e.id for e in events[:3]]
    assert first["more"] is True
    assert [e["id"] for e in second["results"]] == [e.id for e in events[3:]]
    assert second["more"] is False
    assert third == {"results": [], "cursor": events[-1].id, "more": False, "reset": False}


def test_without_a_cursor_the_newest_events_come_oldest_first(client):
    owner = member(Role.MEMBER)
    events = publish(owner.organisation, 4)

    body = read(client, bearer(owner.user), limit=2).json()

    assert [e["id"] for e in body["results"]] == [events[2].id, events[3].id]
    assert body["cursor"] == events[3].id


def test_a_cursor_whose_event_was_pruned_says_reset(client):
    owner = member(Role.OWNER)
    old = publish(owner.organisation, 2)
    FeedEvent.objects.filter(pk__in=[e.pk for e in old]).update(
        created_at=timezone.now() - timedelta(days=30)
    )
    fresh = publish(owner.organisation)[0]

    assert feed_prune() == 2
    body = read(client, bearer(owner.user), after=old[0].id).json()

    assert body["reset"] is True
    assert [e["id"] for e in body["results"]] == [fresh.id]


def test_another_organisations_events_are_never_read(client):
    owner = member(Role.OWNER)
    other = member(Role.OWNER)
    mine = publish(owner.organisation)[0]
    theirs = publish(other.organisation)[0]

    body = read(client, bearer(owner.user), after=0).json()
    cursor_of_theirs = read(client, bearer(owner.user), after=theirs.id).json()

    assert [e["id"] for e in body["results"]] == [mine.id]
    # Their cursor is not one of ours: a reset, with our events only.
    assert cursor_of_theirs["reset"] is True
    assert [e["id"] for e in cursor_of_theirs["results"]] == [mine.id]


def test_api_keys_read_their_organisations_feed(client):
    key = ApiKeyFactory()
    event = publish(key.organisation)[0]

    body = read(client, api_key_header(key), after=0).json()

    assert [e["id"] for e in body["results"]] == [event.id]


@pytest.mark.parametrize(
    "query",
    [{"after": "-1"}, {"after": "abc"}, {"after": "9" * 40}, {"limit": "0"}, {"limit": "101"}],
)
def test_bad_cursors_and_limits_are_400_with_the_error_body(client, query):
    owner = member(Role.OWNER)

    response = read(client, bearer(owner.user), **query)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_the_feed_needs_a_signed_in_caller(client):
    response = client.get("/api/v1/events")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_read_costs_a_bounded_number_of_queries(client):
    owner = member(Role.OWNER)
    publish(owner.organisation, 50)
    auth = bearer(owner.user)
    read(client, auth, after=0)  # warm the principal cache

    with CaptureQueriesContext(connection) as queries:
        assert read(client, auth, after=0).status_code == 200

    assert len(queries) <= 4, [q["sql"] for q in queries]


# ---- the stream under WSGI: what is there, then the client reconnects -------------------------
def test_the_stream_sends_retry_cursor_and_events_then_ends(client, settings):
    settings.FEED_POLL_SECONDS = 2.5
    owner = member(Role.OWNER)
    events = publish(owner.organisation, 3)

    response = client.get(
        "/api/v1/events/stream",
        HTTP_LAST_EVENT_ID=str(events[0].id),
        HTTP_ACCEPT="text/event-stream",
        **bearer(owner.user),
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache, no-store"
    messages = sse_messages(response)
    assert messages[0] == {"retry": "2500", "id": str(events[0].id)}
    assert [m["id"] for m in messages[1:]] == [str(e.id) for e in events[1:]]
    assert [m["data"]["id"] for m in messages[1:]] == [e.id for e in events[1:]]
    assert messages[1]["data"]["type"] == "job.queued"


def test_a_first_stream_starts_at_the_newest_event_without_replaying(client):
    owner = member(Role.OWNER)
    events = publish(owner.organisation, 3)

    messages = sse_messages(client.get("/api/v1/events/stream", **bearer(owner.user)))

    # The cursor only: the client's next reconnect resumes after the newest event.
    assert messages == [{"retry": "2000", "id": str(events[-1].id)}]


def test_a_stream_from_a_pruned_cursor_sends_a_reset(client):
    owner = member(Role.OWNER)
    gone = publish(owner.organisation)[0]
    FeedEvent.objects.filter(pk=gone.pk).delete()
    newest = publish(owner.organisation)[0]

    messages = sse_messages(
        client.get(f"/api/v1/events/stream?after={gone.id}", **bearer(owner.user))
    )

    assert messages[1] == {
        "id": str(newest.id),
        "data": {"type": "feed.reset", "cursor": newest.id},
    }


@pytest.mark.parametrize("value", ["-3", "1e3", "x", "9" * 20, "١٢"])
def test_a_bad_last_event_id_is_400(client, value):
    owner = member(Role.OWNER)

    response = client.get("/api/v1/events/stream", HTTP_LAST_EVENT_ID=value, **bearer(owner.user))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"


# ---- tickets for EventSource -----------------------------------------------------------------
def ticket_for(client, owner) -> str:
    response = client.post("/api/v1/events/tickets", **bearer(owner.user))
    assert response.status_code == 201, response.json()
    return response.json()["ticket"]


def test_a_ticket_opens_its_organisations_stream_without_a_header(client):
    owner = member(Role.VIEWER)
    event = publish(owner.organisation)[0]
    ticket = ticket_for(client, owner)
    client.logout()

    response = client.get(f"/api/v1/events/stream?ticket={ticket}&after=0")

    assert response.status_code == 200
    assert [m.get("id") for m in sse_messages(response)] == ["0", str(event.id)]


def test_a_ticket_opens_nothing_else(client):
    owner = member(Role.OWNER)
    ticket = ticket_for(client, owner)

    assert client.get(f"/api/v1/events?ticket={ticket}").status_code == 401
    assert client.get(f"/api/v1/jobs?ticket={ticket}").status_code == 401


def test_a_ticket_cannot_be_pointed_at_another_organisation(client):
    owner = member(Role.OWNER)
    other = MembershipFactory(user=owner.user, organisation=OrganisationFactory(), role=Role.OWNER)
    ticket = client.post(
        "/api/v1/events/tickets",
        HTTP_X_ORGANISATION=str(owner.organisation.pk),
        **bearer(owner.user),
    ).json()["ticket"]

    response = client.get(
        f"/api/v1/events/stream?ticket={ticket}", HTTP_X_ORGANISATION=str(other.organisation.pk)
    )

    assert response.status_code == 404


def test_signing_out_everywhere_ends_a_ticket(client):
    owner = member(Role.OWNER)
    ticket = ticket_for(client, owner)
    owner.user.token_version += 1
    owner.user.save(update_fields=["token_version"])

    response = client.get(f"/api/v1/events/stream?ticket={ticket}")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "ticket_revoked"


@pytest.mark.parametrize("ticket", ["forged", "a:b:c"])
def test_a_forged_ticket_is_401(client, ticket):
    response = client.get(f"/api/v1/events/stream?ticket={ticket}")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_ticket"


def test_an_expired_ticket_is_401(client, settings):
    owner = member(Role.OWNER)
    ticket = ticket_for(client, owner)
    settings.FEED_TICKET_SECONDS = -1

    response = client.get(f"/api/v1/events/stream?ticket={ticket}")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "ticket_expired"


def test_api_keys_get_no_ticket(client):
    key = ApiKeyFactory()

    response = client.post("/api/v1/events/tickets", **api_key_header(key))

    assert response.status_code == 403
