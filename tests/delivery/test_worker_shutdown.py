"""`docker stop` on a worker, for real: Celery + Redis behind docker/worker_entrypoint.py.

A task that outlasts WORKER_WARM_SHUTDOWN_SECONDS is handed back to the queue at once, instead of
sitting unacknowledged until the broker's visibility timeout (an hour here, hours in production).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.processes import RedisServer, wait_for

from .conftest import ROOT

pytestmark = [pytest.mark.slow]


def probe_env(**extra: str) -> dict[str, str]:
    # Without DJANGO_SETTINGS_MODULE, Celery does not set up Django in the probe worker.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def start_worker(
    broker_url: str, queue: str, warm_seconds: str, log: Path, **extra: str
) -> subprocess.Popen:
    command = [
        sys.executable,
        str(ROOT / "docker" / "worker_entrypoint.py"),
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.delivery.shutdown_probe",
        "worker",
        "-Q",
        queue,
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--hostname",
        f"probe-{uuid.uuid4().hex[:8]}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]
    env = probe_env(
        PROBE_BROKER_URL=broker_url,
        PROBE_QUEUE=queue,
        WORKER_WARM_SHUTDOWN_SECONDS=warm_seconds,
        **extra,
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a failed test can kill the whole process group
        )


@pytest.fixture
def redis_server():
    server = RedisServer(appendonly=False).start()
    yield server
    server.kill()


@pytest.mark.parametrize(
    ("task_seconds", "warm_seconds", "queued_after_stop"),
    [
        (2, "30", 0),  # finishes inside the warm shutdown: acknowledged, gone from the queue
        (120, "1", 1),  # still running: soft shutdown hands the message back to the queue
    ],
)
def test_stopping_a_worker_finishes_or_requeues_its_task(
    tmp_path, redis_server, task_seconds, warm_seconds, queued_after_stop
):
    from tests.delivery.shutdown_probe import app

    queue = f"probe-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    marker = tmp_path / "started"
    worker = start_worker(redis_server.url, queue, warm_seconds, log)
    try:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), timeout=60, what="worker")
        with app.connection_for_write(redis_server.url) as connection:
            app.send_task(
                "probe.sleep", args=[task_seconds, str(marker)], queue=queue, connection=connection
            )
        wait_for(marker.exists, timeout=30, what="task start")

        worker.send_signal(signal.SIGTERM)
        returncode = worker.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)

    client = redis_server.client()
    assert returncode == 0, log.read_text(errors="replace")
    assert client.llen(queue) == queued_after_stop
    assert client.hlen("unacked") == 0
    if queued_after_stop:
        assert "Restoring 1 unacknowledged message(s)" in log.read_text(errors="replace")


def test_a_killed_worker_strands_its_task_until_the_visibility_timeout(tmp_path, redis_server):
    """The control: what the entrypoint prevents. SIGKILL leaves the message in `unacked`."""
    from tests.delivery.shutdown_probe import app

    queue = f"probe-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    marker = tmp_path / "started"
    out = log.open("ab")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.delivery.shutdown_probe",
            "worker",
            "-Q",
            queue,
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=probe_env(PROBE_BROKER_URL=redis_server.url, PROBE_QUEUE=queue),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    try:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), timeout=60, what="worker")
        with app.connection_for_write(redis_server.url) as connection:
            app.send_task(
                "probe.sleep", args=[120, str(marker)], queue=queue, connection=connection
            )
        wait_for(marker.exists, timeout=30, what="task start")

        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)

    client = redis_server.client()
    time.sleep(0.2)
    assert client.llen(queue) == 0
    assert client.hlen("unacked") == 1


@pytest.mark.parametrize(
    ("cancel_on_loss", "finishes"),
    [
        ("0", True),  # LexisCore's setting: the task goes on and finishes
        ("1", False),  # the control: Celery's cancel throws the running task away
    ],
)
def test_a_broker_restart_lets_a_running_task_finish(tmp_path, cancel_on_loss, finishes):
    """A Redis blip (restart, failover) must not throw away hours of transcription: the task
    finishes; its message, unacknowledged on the old connection, comes back only after the
    visibility timeout, and the job lease makes that delivery a no-op (tests/audio_jobs)."""
    from tests.delivery.shutdown_probe import app

    server = RedisServer(appendonly=True).start()
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    log, marker, done = tmp_path / "worker.log", tmp_path / "started", tmp_path / "done"
    worker = start_worker(
        server.url, queue, "30", log, PROBE_CANCEL_ON_CONNECTION_LOSS=cancel_on_loss
    )
    try:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), timeout=60, what="worker")
        with app.connection_for_write(server.url) as connection:
            app.send_task(
                "probe.sleep",
                args=[8, str(marker), str(done)],
                queue=queue,
                connection=connection,
            )
        wait_for(marker.exists, timeout=30, what="task start")
        port = server.port
        server.restart()
        assert server.port == port  # the worker reconnects to the same address

        if finishes:
            wait_for(done.exists, timeout=40, what="the task to finish")
        else:
            time.sleep(15)
            assert not done.exists()
            assert "Terminating it instead" in log.read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        server.kill()
