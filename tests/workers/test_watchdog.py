"""The memory watchdog that recycles thread-pool (GPU) workers, and the stall watchdog that
restarts a worker whose broker consumer stopped delivering."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from lexiscore.celery import app
from tests.support.processes import RedisServer, app_broker, running_worker, wait_for
from workers.queues import Queue
from workers.watchdog import ConsumerStallWatchdog, MemoryWatchdog, over_limit, resident_mb


@pytest.mark.parametrize(
    ("rss", "gpu", "max_rss", "max_gpu", "recycle"),
    [
        (900.0, None, 1000, 0, False),
        (1100.0, None, 1000, 0, True),
        (1100.0, None, 0, 0, False),
        (100.0, 70_000.0, 1000, 60_000, True),
        (100.0, None, 1000, 60_000, False),
        (100.0, 50_000.0, 1000, 60_000, False),
    ],
)
def test_a_worker_is_recycled_only_past_a_configured_limit(rss, gpu, max_rss, max_gpu, recycle):
    reason = over_limit(rss_mb=rss, gpu_mb=gpu, max_rss_mb=max_rss, max_gpu_mb=max_gpu)

    assert (reason is not None) == recycle


def test_resident_memory_of_this_process_is_read():
    rss = resident_mb()

    assert rss is not None
    assert 10 < rss < 100_000


def test_the_watchdog_names_the_limit_it_passed():
    watchdog = MemoryWatchdog(max_rss_mb=1, max_gpu_mb=0, interval=60)

    assert "WORKER_MAX_RSS_MB=1" in (watchdog.check() or "")


class _Broker:
    """What the stall watchdog observes, set by each test."""

    def __init__(self) -> None:
        self.held = False
        self.waiting: int | None = 0
        self.received = 0

    def watchdog(self, checks: int = 3) -> ConsumerStallWatchdog:
        return ConsumerStallWatchdog(
            checks=checks,
            interval=30,
            held=lambda: self.held,
            waiting=lambda: self.waiting,
            received=lambda: self.received,
        )


def test_a_stall_is_reported_after_the_configured_checks_in_a_row():
    broker = _Broker()
    watchdog = broker.watchdog(checks=3)
    broker.waiting = 4

    verdicts = [watchdog.check() for _ in range(3)]

    assert verdicts[:2] == [None, None]
    assert verdicts[2] is not None
    assert "4 message(s) wait" in verdicts[2]
    assert "3 checks (90 s)" in verdicts[2]


@pytest.mark.parametrize(
    "activity",
    ["a task received", "a task held", "an empty queue", "a broker that cannot be asked"],
)
def test_any_sign_of_life_starts_the_count_again(activity):
    broker = _Broker()
    watchdog = broker.watchdog(checks=2)
    broker.waiting = 1
    assert watchdog.check() is None  # one stalled check

    if activity == "a task received":
        broker.received += 1
    elif activity == "a task held":
        broker.held = True
    elif activity == "an empty queue":
        broker.waiting = 0
    else:
        broker.waiting = None
    assert watchdog.check() is None

    broker.held, broker.waiting = False, 1
    assert watchdog.check() is None  # counting from one again
    assert watchdog.check() is not None


@pytest.mark.slow
@pytest.mark.xdist_group("workers")
@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_consumer_stopped_delivering_is_restarted_and_loses_nothing(tmp_path):
    """A real worker made deaf (its broker sockets out of the event loop, no error anywhere)
    stops itself once its queue has waited; the message is still there for the next worker,
    which a container's restart policy would start."""
    server = RedisServer().start()
    options = {
        "broker_url": server.url,
        "database_name": connection.settings_dict["NAME"],
        "queues": [str(Queue.MAINTENANCE)],
        "pool": "solo",
        "include": ["tests.support.tasks"],
        "env": {"WORKER_STALL_CHECKS": "3", "WORKER_STALL_CHECK_SECONDS": "1"},
    }
    done = tmp_path / "done"
    try:
        with app_broker(server.url):
            with running_worker(**options) as deaf:
                deafened = app.send_task(
                    "tests.support.tasks.deafen_consumer", queue=str(Queue.MAINTENANCE)
                )
                wait_for(lambda: "deafen_consumer" in deaf.log() and "succeeded" in deaf.log(),
                         timeout=30, what="the consumer made deaf")  # fmt: skip
                # Past the 1 s server-side timeout of the BRPOP the deaf consumer had sent: the
                # next message stays in the queue rather than in the reply nobody reads.
                time.sleep(2)
                app.send_task(
                    "tests.support.tasks.slow_write",
                    args=[str(done), 0],
                    queue=str(Queue.MAINTENANCE),
                )
                try:
                    wait_for(lambda: deaf.process.poll() is not None, timeout=30, what="exit")
                finally:
                    log = deaf.log()
                    print(log[-4000:])  # shown if the test fails
                assert not done.exists()
                with app.connection_for_read() as conn:
                    depth = conn.default_channel.queue_declare(
                        queue=str(Queue.MAINTENANCE), passive=True
                    )[1]
            with running_worker(**options):  # what `restart: unless-stopped` does
                wait_for(done.exists, timeout=30, what="the message run by the next worker")
    finally:
        server.kill()

    assert deafened.id in log
    assert "its broker consumer is not delivering" in log
    assert "Restarting this worker (warm shutdown): 1 message(s) wait" in log
    assert depth == 1


HANGING_SHUTDOWN = """
import logging, signal, sys, time
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
held = {"now": False}
def on_sigterm(*_args):  # a warm shutdown that does not end; maybe a task arrives meanwhile
    print("SIGTERM: warm shutdown starts", flush=True)
    held["now"] = "--task-arrives" in sys.argv
signal.signal(signal.SIGTERM, on_sigterm)
from workers.watchdog import ConsumerStallWatchdog
ConsumerStallWatchdog(
    checks=1, interval=0.5, exit_grace=1.0, received=lambda: 0, waiting=lambda: 1,
    held=lambda: held["now"],
).start()
time.sleep(6)
print("still running", flush=True)
"""


@pytest.mark.parametrize("task_arrives", [False, True], ids=["stalled", "task-arrives"])
def test_a_warm_shutdown_that_hangs_ends_in_an_exit_unless_a_task_arrived(task_arrives):
    """With nothing held, a hard exit loses nothing; a task received meanwhile is let finish."""
    import subprocess
    import sys

    from tests.support.processes import ROOT

    args = [sys.executable, "-c", HANGING_SHUTDOWN] + (["--task-arrives"] if task_arrives else [])
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30)

    assert "its broker consumer is not delivering" in result.stdout
    assert "SIGTERM: warm shutdown starts" in result.stdout
    if task_arrives:
        assert result.returncode == 0, result.stderr
        assert "still running" in result.stdout
    else:
        assert result.returncode == 70, result.stderr
        assert "did not finish in 1 s: exiting" in result.stdout
        assert "still running" not in result.stdout
