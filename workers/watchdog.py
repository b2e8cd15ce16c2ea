"""Memory watchdog for thread-pool workers: recycle a leaking worker without losing a job.

A prefork worker replaces a child whose memory grew (`worker_max_memory_per_child`). The GPU
worker runs one process with a thread pool (many jobs feeding one model), so nothing replaces it.
This watchdog checks the process's resident memory and the GPU's used memory every
`WORKER_MEMORY_CHECK_SECONDS`; past `WORKER_MAX_RSS_MB` / `WORKER_MAX_GPU_MEMORY_MB` it sends the
worker SIGTERM: a warm shutdown stops taking messages, lets the running jobs finish, and exits;
the container's restart policy starts a fresh process. Messages are acknowledged late, so one
that was reserved but not started goes back to the queue.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from typing import Any

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


class MemoryWatchdog:
    def __init__(self, *, max_rss_mb: int, max_gpu_mb: int, interval: float) -> None:
        self.max_rss_mb = max_rss_mb
        self.max_gpu_mb = max_gpu_mb
        self.interval = max(interval, 1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watchdog", daemon=True)

    def start(self) -> MemoryWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> str | None:
        return over_limit(
            rss_mb=resident_mb(),
            gpu_mb=gpu_used_mb() if self.max_gpu_mb else None,
            max_rss_mb=self.max_rss_mb,
            max_gpu_mb=self.max_gpu_mb,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            reason = self.check()
            if reason:
                logger.warning("Recycling this worker (warm shutdown): %s", reason)
                os.kill(os.getpid(), signal.SIGTERM)
                return


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
