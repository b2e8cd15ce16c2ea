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
