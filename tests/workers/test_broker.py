"""kombu's Redis transport: a broken consumer connection reaches kombu as an error (which it
handles by re-establishing the connection) instead of being retried by redis-py inside a read of
the worker's event loop, where the retried read can block the worker for ever (workers/broker.py).
"""

from __future__ import annotations

import threading

import pytest
from kombu import Connection

import lexiscore.celery  # noqa: F401 - installs the patch, as every worker does
from tests.support.processes import RedisServer

pytestmark = pytest.mark.xdist_group("workers")


@pytest.fixture
def redis_server():
    server = RedisServer(appendonly=False).start()
    yield server
    server.kill()


def _outcome(call, timeout: float = 10.0) -> object:
    """What ``call`` returned or raised, or "blocked" if it did not return in ``timeout``."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except Exception as exc:  # the outcome is what the test inspects
            result["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return "blocked" if thread.is_alive() else result["value"]


def test_event_loop_connections_do_not_retry_but_others_do(redis_server):
    with Connection(redis_server.url) as connection:
        channel = connection.default_channel

        event_loop = channel._connparams(asynchronous=True)
        other = channel._connparams(asynchronous=False)

    assert event_loop["retry"].get_retries() == 0
    assert "retry" not in other  # publishing keeps redis-py's default retries


def test_a_broker_restart_reaches_the_pubsub_consumer_as_an_error(redis_server):
    with Connection(redis_server.url, transport_options={"socket_timeout": 30}) as connection:
        channel = connection.default_channel
        subscriber = channel.subclient
        subscriber.subscribe("/0.lexiscore.test")
        assert subscriber.parse_response()[0] in (b"subscribe", "subscribe")

        redis_server.restart()
        outcome = _outcome(lambda: channel._receive_one(subscriber))

    assert isinstance(outcome, connection.connection_errors), outcome


def test_a_broker_restart_reaches_the_brpop_consumer_as_an_error(redis_server):
    with Connection(redis_server.url) as connection:
        channel = connection.default_channel
        channel._queue_cycle.update(["lexiscore-test-queue"])
        channel._active_queues.append("lexiscore-test-queue")
        client = channel.client  # as the event loop's poller does before its first BRPOP
        client.connection = client.connection_pool.get_connection()
        channel._brpop_start(timeout=30)

        redis_server.restart()
        outcome = _outcome(channel._brpop_read)

    assert isinstance(outcome, connection.connection_errors), outcome
