"""Within an organisation, events become visible in id order, whatever order their transactions
commit in: a reader's cursor can never pass an event still to be committed."""

from __future__ import annotations

import threading

import pytest
from django.db import connections, transaction

from apps.accounts.models import Role
from apps.feed.models import FeedEvent
from apps.feed.services import feed_publish
from tests.factories import member

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(function) -> threading.Thread:
    def run() -> None:
        try:
            function()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_later_transaction_waits_for_the_earlier_ones_commit_before_drawing_its_id():
    organisation = member(Role.OWNER).organisation
    first_inserted = threading.Event()
    release_first = threading.Event()
    ids: dict[str, int] = {}

    def first() -> None:
        with transaction.atomic():
            ids["first"] = feed_publish(
                organisation_id=organisation.pk, type="job.queued", data={}
            ).id
            first_inserted.set()
            release_first.wait(10)

    def second() -> None:
        with transaction.atomic():
            ids["second"] = feed_publish(
                organisation_id=organisation.pk, type="job.failed", data={}
            ).id

    slow = in_thread(first)
    assert first_inserted.wait(10)
    fast = in_thread(second)
    fast.join(1.0)

    # The second is still waiting: nothing of the organisation is visible past the first's id.
    assert fast.is_alive()
    assert not FeedEvent.objects.filter(organisation=organisation).exists()
    release_first.set()
    slow.join(10)
    fast.join(10)
    assert ids["first"] < ids["second"]
    assert list(
        FeedEvent.objects.filter(organisation=organisation).values_list("id", flat=True)
    ) == [ids["first"], ids["second"]]


def test_other_organisations_do_not_wait():
    mine = member(Role.OWNER).organisation
    theirs = member(Role.OWNER).organisation
    inserted = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with transaction.atomic():
            feed_publish(organisation_id=mine.pk, type="job.queued", data={})
            inserted.set()
            release.wait(10)

    holder = in_thread(hold)
    try:
        assert inserted.wait(10)
        other = in_thread(
            lambda: feed_publish(organisation_id=theirs.pk, type="job.queued", data={})
        )
        other.join(5)
        assert not other.is_alive()
        assert FeedEvent.objects.filter(organisation=theirs).count() == 1
    finally:
        release.set()
        holder.join(10)
