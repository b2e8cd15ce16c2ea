"""The one Celery app.

Configuration comes from Django settings (the `CELERY_` namespace in lexiscore/settings/base.py),
queues from workers/queues.py, and routing is by the module that defines a task.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

from celery import Celery, signals
from kombu import Exchange
from kombu import Queue as KombuQueue

from workers import broker
from workers.queues import MODULE_ROUTES, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lexiscore.settings.local")
# A lost Redis connection must reach kombu as an error, not be retried inside its event loop's
# reads, where it can block the worker for ever (workers/broker.py).
broker.install()

app = Celery("lexiscore")
app.config_from_object("django.conf:settings", namespace="CELERY")

_exchange = Exchange("lexiscore", type="direct")
app.conf.task_queues = [KombuQueue(str(q), _exchange, routing_key=str(q)) for q in Queue]
app.conf.task_default_exchange = "lexiscore"
app.conf.task_default_routing_key = str(Queue.MAINTENANCE)


def route_by_module(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any):
    """Route `workers.<module>.<task>` to the queue its module is mapped to."""
    queue = MODULE_ROUTES.get(name.rpartition(".")[0])
    return {"queue": str(queue), "routing_key": str(queue)} if queue else None


app.conf.task_routes = (route_by_module,)
# Import every task module that exists (a queue can be declared before its tasks are written).
app.conf.imports = tuple(m for m in MODULE_ROUTES if importlib.util.find_spec(m) is not None)


@signals.celeryd_init.connect
def use_worker_statement_timeout(**_kwargs: Any) -> None:
    """Give worker processes the longer statement timeout before any connection is opened."""
    from django.conf import settings
    from django.db import connections

    timeout = settings.DB_WORKER_STATEMENT_TIMEOUT_MS
    for alias in connections:
        options = connections[alias].settings_dict.get("OPTIONS", {})
        if "statement_timeout" in options.get("options", ""):
            options["options"] = f"-c statement_timeout={timeout}"


@signals.before_task_publish.connect
def propagate_context(headers: dict | None = None, **_kwargs: Any) -> None:
    """Carry the request id and job id of the caller into the task's message headers."""
    from apps.core.context import job_id_var, request_id_var

    if headers is None:
        return
    if (request_id := request_id_var.get()) and not headers.get("request_id"):
        headers["request_id"] = request_id
    if (job_id := job_id_var.get()) and not headers.get("job_id"):
        headers["job_id"] = job_id
    # When this message entered the queue: `manage.py queues` and the queue-age gauge read it.
    headers["published_at"] = time.time()


# Worker metrics (task counts, durations, failures, retries) hook into Celery's signals.
# Thread-pool transcription workers load their models at start (WHISPER_PRELOAD_PROFILES).
# Thread-pool workers (GPU) are recycled by a memory watchdog instead of max-memory-per-child.
import workers.metrics  # noqa: E402
import workers.preload  # noqa: E402
import workers.watchdog  # noqa: E402,F401
