"""One pending dead letter per task id: a redelivered failure updates its row, two failures of one
message at once make one row (a unique index on the pending rows), and migration core.0003 merges
the duplicates written before it."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from apps.core.models import DeadLetter
from apps.core.services import dead_letter_record


def record(task_id: str, error: str) -> DeadLetter:
    return dead_letter_record(
        task_name="workers.emails.send_email",
        task_id=task_id,
        queue="email",
        args=["x"],
        kwargs={},
        exception_type="SMTPServerDisconnected",
        error=error,
    )


@pytest.mark.django_db
def test_a_redelivered_failure_updates_the_pending_row():
    first = record("t-1", "first")
    second = record("t-1", "second")

    assert first.pk == second.pk
    assert list(DeadLetter.objects.values_list("error", flat=True)) == ["second"]


@pytest.mark.django_db
def test_a_requeued_letter_leaves_room_for_a_new_failure_of_the_same_task():
    DeadLetter.objects.filter(pk=record("t-2", "old").pk).update(status=DeadLetter.Status.REQUEUED)

    record("t-2", "new")

    assert sorted(DeadLetter.objects.values_list("status", "error")) == [
        ("pending", "new"),
        ("requeued", "old"),
    ]


@pytest.mark.django_db(transaction=True)
def test_two_failures_of_one_message_at_once_make_one_row():
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def fail(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            record("t-race", f"failure {n}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=fail, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert DeadLetter.objects.filter(task_id="t-race").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_migration_merges_duplicates_keeping_the_newest():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("core")
    executor.migrate([("core", "0002_pending_deletion")])
    try:
        state = executor.loader.project_state([("core", "0002_pending_deletion")])
        Old = state.apps.get_model("core", "DeadLetter")
        now = timezone.now()
        for minutes, error in ((3, "oldest"), (2, "older"), (1, "newest")):
            row = Old.objects.create(task_name="t", task_id="dup", queue="q", error=error)
            Old.objects.filter(pk=row.pk).update(created_at=now - timedelta(minutes=minutes))
        Old.objects.create(task_name="t", task_id="dup", queue="q", status="requeued")
        Old.objects.create(task_name="t", task_id="single", queue="q", error="alone")

        MigrationExecutor(connection).migrate(latest)
    finally:
        MigrationExecutor(connection).migrate(latest)

    assert sorted(DeadLetter.objects.values_list("task_id", "status", "error")) == [
        ("dup", "pending", "newest"),
        ("dup", "requeued", ""),
        ("single", "pending", "alone"),
    ]
