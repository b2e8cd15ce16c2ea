"""Real workers: request id in the worker's log, task metrics on the worker's port, SIGTERM."""

from __future__ import annotations

import urllib.request
import uuid

import pytest
from django.db import connection

from apps.core.context import request_id_var
from tests.support.processes import CeleryWorker, RedisServer, app_broker, free_port, wait_for
from workers.maintenance import ping

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workers")]


@pytest.fixture(scope="module")
def broker():
    server = RedisServer(appendonly=True).start()
    with app_broker(server.url):
        yield server
    server.kill()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_a_task_published_in_a_request_logs_its_request_id_and_moves_worker_metrics(
    broker, transactional_db, tmp_path
):
    port = free_port()
    worker = CeleryWorker(
        broker_url=broker.url,
        database_name=connection.settings_dict["NAME"],
        queues=["maintenance"],
        hostname="obs",
        env={
            "WORKER_METRICS_PORT": str(port),
            "WORKER_METRICS_ADDR": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        },
    ).start()
    request_id = f"req-{uuid.uuid4().hex}"
    try:
        token = request_id_var.set(request_id)
        try:
            ping.apply_async()
        finally:
            request_id_var.reset(token)

        line = wait_for(
            lambda: next(
                (
                    x
                    for x in worker.log().splitlines()
                    if "workers.maintenance.ping" in x and "succeeded" in x
                ),
                None,
            ),
            timeout=30,
            what="the ping task to succeed",
        )
        metrics = wait_for(
            lambda: "celery_tasks_total{" in (text := _scrape(port)) and text,
            timeout=10,
            what="worker metrics",
        )
    finally:
        worker.kill()

    assert f"[{request_id}]" in line
    assert (
        'celery_tasks_total{queue="maintenance",state="SUCCESS",'
        'task="workers.maintenance.ping"} 1.0'
    ) in metrics
    assert (
        'celery_task_duration_seconds_count{queue="maintenance",'
        'task="workers.maintenance.ping"} 1.0' in metrics
    )


def test_sigterm_mid_task_lets_the_task_finish_and_loses_nothing(
    broker, transactional_db, tmp_path
):
    from tests.support.tasks import slow_write

    worker = CeleryWorker(
        broker_url=broker.url,
        database_name=connection.settings_dict["NAME"],
        queues=["maintenance"],
        hostname="term",
        include=["tests.support.tasks"],
    ).start()
    done = tmp_path / "done"
    try:
        slow_write.apply_async(args=[str(done), 3.0], queue="maintenance")
        wait_for(lambda: (tmp_path / "done.started").exists(), timeout=30, what="task start")

        exit_code = worker.terminate(timeout=60)
    finally:
        worker.kill()

    client = broker.client()
    assert exit_code == 0
    assert done.read_text() == "done"
    assert client.llen("maintenance") == 0
    assert client.hlen("unacked") == 0
