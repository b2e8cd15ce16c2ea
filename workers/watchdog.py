"""Memory watchdog for thread-pool workers: recycle a leaking worker without losing a job.

A prefork worker replaces a child whose memory grew (`worker_max_memory_per_child`). The GPU
worker runs one process with a thread pool (many jobs feeding one model), so nothing replaces it.
This watchdog checks the process's resident memory and the GPU's used memory every
`WORKER_MEMORY_CHECK_SECONDS`; past `WORKER_MAX_RSS_MB` / `WORKER_MAX_GPU_MEMORY_MB` it sends the
worker SIGTERM: a warm shutdown stops taking messages, lets the running jobs finish, and exits;
the container's restart policy starts a fresh process. Messages are acknowledged late, so one
that was reserved but not started goes back to the queue.

A second watchdog, on every worker, looks for a broker consumer that has stopped delivering: the
worker holds no task and has received none for `WORKER_STALL_CHECKS` checks in a row (every
`WORKER_STALL_CHECK_SECONDS`) while its queues have messages waiting. Celery and kombu have had
bugs of that shape after a Redis restart (celery#8030, celery#9054: the worker reconnects, logs
nothing, and consumes nothing), and the container's healthcheck, a remote-control ping that
travels on another connection, can still pass. The watchdog then stops the worker (warm shutdown;
with nothing held, at once; a hard exit if that hangs, which loses nothing as the worker holds no
message) and the container's restart policy starts a fresh one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Self

from celery import signals

logger = logging.getLogger(__name__)


def resident_mb() -> float | None:
    """This process's resident memory in MiB (Linux /proc), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def gpu_used_mb() -> float | None:
    """Used memory in MiB of the GPUs nvidia-smi sees (the largest), or None without one.

    A GPU worker runs in a container given exactly one GPU (compose reserves `count: 1`), so this
    is that GPU: the worker's model and batches, plus anything else placed on it.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return max(float(line) for line in out.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def over_limit(
    *, rss_mb: float | None, gpu_mb: float | None, max_rss_mb: int, max_gpu_mb: int
) -> str | None:
    """Why the worker should be recycled, or None."""
    if max_rss_mb and rss_mb is not None and rss_mb > max_rss_mb:
        return f"resident memory {rss_mb:.0f} MiB > WORKER_MAX_RSS_MB={max_rss_mb}"
    if max_gpu_mb and gpu_mb is not None and gpu_mb > max_gpu_mb:
        return f"GPU memory used {gpu_mb:.0f} MiB > WORKER_MAX_GPU_MEMORY_MB={max_gpu_mb}"
    return None


class _Watchdog(ABC):
    """A daemon thread calling ``check`` every ``interval`` seconds until it gives a reason to
    stop the worker, then ``act(reason)`` once."""

    name = "watchdog"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @abstractmethod
    def check(self) -> str | None:
        """Why the worker should be stopped now, or None."""

    @abstractmethod
    def act(self, reason: str) -> None:
        """Stop the worker for ``reason``."""

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            reason = self.check()
            if reason:
                self.act(reason)
                return


class MemoryWatchdog(_Watchdog):
    name = "memory-watchdog"

    def __init__(self, *, max_rss_mb: int, max_gpu_mb: int, interval: float) -> None:
        super().__init__(max(interval, 1.0))
        self.max_rss_mb = max_rss_mb
        self.max_gpu_mb = max_gpu_mb

    def check(self) -> str | None:
        return over_limit(
            rss_mb=resident_mb(),
            gpu_mb=gpu_used_mb() if self.max_gpu_mb else None,
            max_rss_mb=self.max_rss_mb,
            max_gpu_mb=self.max_gpu_mb,
        )

    def act(self, reason: str) -> None:
        logger.warning("Recycling this worker (warm shutdown): %s", reason)
        os.kill(os.getpid(), signal.SIGTERM)


@signals.worker_ready.connect
def _start_watchdog(**_kwargs: Any) -> None:
    from django.conf import settings

    if not (settings.WORKER_MAX_RSS_MB or settings.WORKER_MAX_GPU_MEMORY_MB):
        return
    MemoryWatchdog(
        max_rss_mb=settings.WORKER_MAX_RSS_MB,
        max_gpu_mb=settings.WORKER_MAX_GPU_MEMORY_MB,
        interval=settings.WORKER_MEMORY_CHECK_SECONDS,
    ).start()
    logger.info(
        "Memory watchdog on: rss <= %s MiB, gpu <= %s MiB",
        settings.WORKER_MAX_RSS_MB or "-",
        settings.WORKER_MAX_GPU_MEMORY_MB or "-",
    )


# ---- broker consumer stalls ------------------------------------------------------------------
_received = 0  # tasks this worker process has received from the broker


@signals.task_received.connect
def _count_received(**_kwargs: Any) -> None:
    global _received
    _received += 1


class ConsumerStallWatchdog(_Watchdog):
    """Stops a worker whose broker consumer delivers nothing while its queues have messages.

    ``held`` says whether the worker holds a task (reserved, scheduled or running), ``waiting``
    how many messages wait in the queues it consumes (None when the broker cannot be asked: no
    verdict), ``received`` how many tasks it has received so far.
    """

    name = "stall-watchdog"

    def __init__(
        self,
        *,
        checks: int,
        interval: float,
        held: Callable[[], bool],
        waiting: Callable[[], int | None],
        received: Callable[[], int],
        exit_grace: float = 30.0,
    ) -> None:
        super().__init__(max(interval, 0.5))
        self.checks = max(int(checks), 1)
        self.exit_grace = exit_grace
        self._held = held
        self._waiting = waiting
        self._received = received
        self._last_received = received()
        self._strikes = 0

    def check(self) -> str | None:
        """One observation; the reason to stop the worker once ``checks`` in a row stalled."""
        received = self._received()
        if received != self._last_received or self._held():
            self._last_received = received
            self._strikes = 0
            return None
        waiting = self._waiting()
        if not waiting:
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes < self.checks:
            return None
        return (
            f"{waiting} message(s) wait in its queues, and for {self._strikes} checks "
            f"({self._strikes * self.interval:.0f} s) it has held and received no task: its "
            "broker consumer is not delivering"
        )

    def act(self, reason: str) -> None:
        logger.error("Restarting this worker (warm shutdown): %s", reason)
        os.kill(os.getpid(), signal.SIGTERM)
        # Nothing is held, so a shutdown that hangs on the broken consumer loses nothing if it is
        # cut short; one that waits for a task received meanwhile is left alone.
        if self._stop.wait(self.exit_grace):
            return
        if self._held():
            logger.warning("Warm shutdown waits for a task received meanwhile")
            return
        logger.error("Warm shutdown did not finish in %.0f s: exiting", self.exit_grace)
        logging.shutdown()
        os._exit(70)


def _waiting_messages(consumer: Any) -> int | None:
    """Messages waiting in the queues ``consumer`` consumes now, asked on a connection of its own
    (so a consumer connection in a bad state does not answer for itself)."""
    try:
        names = [queue.name for queue in consumer.task_consumer.queues]
        with consumer.app.connection_for_read() as connection:
            channel = connection.default_channel
            total = 0
            for name in names:
                try:
                    total += channel.queue_declare(queue=name, passive=True)[1]
                except connection.channel_errors:  # Redis: an empty queue does not exist
                    channel = connection.channel()
            return total
    except Exception:  # the broker is down or restarting: no verdict this time
        logger.debug("stall watchdog: could not read the queues' depth", exc_info=True)
        return None


def _holds_a_task() -> bool:
    from celery.worker import state

    return bool(state.requests)


@signals.worker_ready.connect
def _start_stall_watchdog(sender: Any = None, **_kwargs: Any) -> None:
    from django.conf import settings

    if not settings.WORKER_STALL_CHECKS or sender is None:
        return
    ConsumerStallWatchdog(
        checks=settings.WORKER_STALL_CHECKS,
        interval=settings.WORKER_STALL_CHECK_SECONDS,
        held=_holds_a_task,
        waiting=lambda: _waiting_messages(sender),
        received=lambda: _received,
    ).start()
    logger.info(
        "Stall watchdog on: restart after %s checks %.0f s apart with messages waiting and none "
        "received",
        settings.WORKER_STALL_CHECKS,
        settings.WORKER_STALL_CHECK_SECONDS,
    )
