"""Tasks that exist only for tests: they fail on purpose."""

from celery import shared_task

from workers.base import LexisTask, TransientError


@shared_task(
    name="tests.support.tasks.always_transient",
    base=LexisTask,
    max_retries=2,
    retry_backoff=False,
    default_retry_delay=0,
)
def always_transient(marker: str) -> None:
    raise TransientError(f"peer unavailable for {marker}")


@shared_task(name="tests.support.tasks.permanent_failure", base=LexisTask)
def permanent_failure(marker: str) -> None:
    raise ValueError(f"cannot process {marker}")


@shared_task(name="tests.support.tasks.slow_write", base=LexisTask, max_retries=0)
def slow_write(path: str, seconds: float) -> str:
    """Write `<path>.started`, sleep, then write `path`: a long task to interrupt."""
    import time
    from pathlib import Path

    Path(f"{path}.started").write_text("started")
    time.sleep(seconds)
    Path(path).write_text("done")
    return "done"
