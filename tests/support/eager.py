"""Celery tasks run in-process for a test: a publish becomes a run of the task."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def eager_tasks(*, propagate: bool) -> Iterator[None]:
    """`propagate`: a task's exception reaches the publisher (else it stays in its result, as
    with a worker)."""
    from lexiscore.celery import app

    saved = {key: app.conf.get(key) for key in ("task_always_eager", "task_eager_propagates")}
    app.conf.update(task_always_eager=True, task_eager_propagates=propagate)
    try:
        yield
    finally:
        app.conf.update(saved)
