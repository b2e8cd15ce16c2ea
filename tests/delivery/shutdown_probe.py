"""A minimal Celery app for test_worker_shutdown.py, configured like LexisCore's workers.

Broker URL and queue come from the environment; the one task writes a marker when it starts and
then runs for as long as it is asked to.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

app = Celery("shutdown_probe", broker=os.environ.get("PROBE_BROKER_URL", "memory://"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    task_default_queue=os.environ.get("PROBE_QUEUE", "probe"),
    worker_prefetch_multiplier=1,
    worker_soft_shutdown_timeout=float(os.environ.get("PROBE_SOFT_SHUTDOWN_TIMEOUT", "2")),
    worker_enable_soft_shutdown_on_idle=True,
    # LexisCore's workers let a running task finish across a broker restart (settings/base.py).
    worker_cancel_long_running_tasks_on_connection_loss=os.environ.get(
        "PROBE_CANCEL_ON_CONNECTION_LOSS", "0"
    )
    == "1",
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
)


@app.task(name="probe.sleep")
def sleep(seconds: float, marker: str, done: str = "") -> None:
    Path(marker).write_text("started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
    if done:
        Path(done).write_text("finished")
