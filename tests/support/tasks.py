"""Tasks that exist only for tests: they fail on purpose, run long, or break the worker."""

from celery import shared_task
from celery.signals import worker_ready

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


# A worker's consumer, kept when the worker is ready (this module is loaded with --include).
_consumer: dict[str, object] = {}


@worker_ready.connect
def _keep_consumer(sender: object = None, **_kwargs: object) -> None:
    _consumer["consumer"] = sender


@shared_task(name="tests.support.tasks.deafen_consumer")
def deafen_consumer() -> int:
    """Make this worker's broker consumer stop delivering without an error, the way kombu's Redis
    transport has after a broker restart (celery#8030): the transport forgets which sockets are
    its own while still counting them as registered, so it neither reads them nor registers them
    again, and the event loop stops watching them. Runs in the consumer's thread: for a
    `--pool solo` worker only. Returns how many sockets it dropped."""
    consumer = _consumer["consumer"]
    cycle = consumer.connection.transport.cycle  # type: ignore[attr-defined]
    fds = list(cycle._fd_to_chan)
    cycle._fd_to_chan.clear()
    for fd in fds:
        consumer.hub.remove(fd)  # type: ignore[attr-defined]
    return len(fds)
