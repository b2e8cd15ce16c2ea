"""Failed messages end in the dead-letter store and can be requeued; nothing is dropped."""

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection

from apps.core.models import DeadLetter
from lexiscore.celery import app
from tests.support.processes import RedisServer, app_broker, running_worker, wait_for
from workers import base as worker_base
from workers.queues import Queue

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workers")]


@pytest.fixture
def broker():
    server = RedisServer().start()
    with app_broker(server.url):
        yield server
    server.kill()


@pytest.mark.django_db(transaction=True)
def test_retries_then_dead_letters_a_task_that_keeps_failing_transiently(broker):
    db_name = connection.settings_dict["NAME"]

    with running_worker(
        broker_url=broker.url,
        database_name=db_name,
        queues=[str(Queue.MAINTENANCE)],
        include=["tests.support.tasks"],
    ) as worker:
        app.send_task("tests.support.tasks.always_transient", args=["job-42"], queue="maintenance")
        dead = wait_for(
            lambda: DeadLetter.objects.filter(
                task_name="tests.support.tasks.always_transient"
            ).first(),
            timeout=60,
            what="a dead letter",
        )

    assert dead.args == ["job-42"]
    assert dead.attempts == 3  # the first run and two retries
    assert dead.exception_type == "workers.base.TransientError"
    assert "peer unavailable for job-42" in dead.error
    assert "Traceback" in dead.traceback
    assert dead.queue == "maintenance"
    assert "Retry in" in worker.log()


@pytest.mark.django_db(transaction=True)
def test_a_requeued_dead_letter_runs_again(broker, capsys):
    db_name = connection.settings_dict["NAME"]

    with running_worker(
        broker_url=broker.url,
        database_name=db_name,
        queues=[str(Queue.MAINTENANCE)],
        include=["tests.support.tasks"],
    ) as worker:
        app.send_task("tests.support.tasks.permanent_failure", args=["file-7"], queue="maintenance")
        first = wait_for(
            lambda: DeadLetter.objects.filter(args=["file-7"]).first(),
            timeout=30,
            what="dead letter",
        )
        assert first.attempts == 1  # a permanent error is not retried

        call_command("dead_letters", "requeue", str(first.pk))

        wait_for(
            lambda: DeadLetter.objects.filter(args=["file-7"]).count() == 2,
            timeout=30,
            what="the requeued message to fail again",
        )

    first.refresh_from_db()
    assert first.status == DeadLetter.Status.REQUEUED
    assert first.requeue_count == 1
    assert worker.log().count("cannot process file-7") >= 2
    call_command("dead_letters", "list")
    assert "2 dead letter(s)" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_dead_letter_goes_through_its_queue_when_the_database_is_down(broker, monkeypatch):
    payload = {
        "task_name": "workers.webhooks.deliver",
        "task_id": "abc-123",
        "queue": "webhooks",
        "args": [1],
        "kwargs": {},
        "exception_type": "builtins.RuntimeError",
        "error": "boom",
        "traceback": "",
        "attempts": 6,
        "request_id": "req-1",
    }

    def database_down(**_kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("apps.core.services.dead_letter_record", database_down)
    worker_base.dead_letter(payload)
    monkeypatch.undo()

    assert broker.client().llen("dead_letter") == 1
    assert not DeadLetter.objects.exists()
    with running_worker(
        broker_url=broker.url,
        database_name=connection.settings_dict["NAME"],
        queues=[str(Queue.DEAD_LETTER)],
    ):
        stored = wait_for(
            lambda: DeadLetter.objects.filter(task_id="abc-123").first(), timeout=30, what="store"
        )
    assert stored.task_name == "workers.webhooks.deliver"
    assert stored.attempts == 6


@pytest.mark.django_db
def test_purge_needs_confirmation():
    DeadLetter.objects.create(task_name="t", task_id="1", queue="email")

    with pytest.raises(Exception, match="--yes"):
        call_command("dead_letters", "purge")
    call_command("dead_letters", "purge", "--yes")

    assert not DeadLetter.objects.exists()
