"""Run a Celery worker so that stopping its container never strands a job.

`docker stop` sends SIGTERM and, after the service's `stop_grace_period`, SIGKILL. Celery treats
SIGTERM as a warm shutdown: it stops taking messages and waits for the running task to finish.
A transcription can outlast any sensible grace period, and a worker SIGKILLed mid-task leaves its
message unacknowledged in Redis until the broker's visibility timeout (hours) expires.

So this wrapper forwards SIGTERM (warm shutdown) and, if the worker is still running after
WORKER_WARM_SHUTDOWN_SECONDS, sends SIGQUIT: Celery's soft shutdown gives the task
`worker_soft_shutdown_timeout` more seconds, then cancels it and puts its message straight back on
the queue, where another worker picks it up. Set the service's `stop_grace_period` above
WORKER_WARM_SHUTDOWN_SECONDS + CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT so SIGKILL never comes first.

Usage: python docker/worker_entrypoint.py celery -A lexiscore worker ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from types import FrameType

DEFAULT_WARM_SHUTDOWN_SECONDS = 540.0
# Signals passed through unchanged (HUP restarts, USR1 dumps tracebacks, QUIT is a cold shutdown).
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def log(message: str) -> None:
    sys.stderr.write(f"worker-entrypoint: {message}\n")
    sys.stderr.flush()


def warm_shutdown_seconds() -> float:
    raw = os.environ.get("WORKER_WARM_SHUTDOWN_SECONDS", "")
    try:
        return float(raw) if raw else DEFAULT_WARM_SHUTDOWN_SECONDS
    except ValueError:
        log(f"WORKER_WARM_SHUTDOWN_SECONDS={raw!r} is not a number; using the default")
        return DEFAULT_WARM_SHUTDOWN_SECONDS


def run(argv: list[str]) -> int:
    if not argv:
        log("usage: worker_entrypoint.py COMMAND [ARG ...]")
        return 64
    warm_seconds = warm_shutdown_seconds()
    child: subprocess.Popen[bytes] | None = None
    stop_requested = threading.Event()
    stop_started = threading.Event()

    def escalate() -> None:
        if child is not None and child.poll() is None:
            log(
                f"still running {warm_seconds:g}s after SIGTERM: sending SIGQUIT "
                "(soft shutdown, then the running task's message is requeued)"
            )
            child.send_signal(signal.SIGQUIT)

    def begin_stop() -> None:
        if child is None or stop_started.is_set():
            return
        stop_started.set()
        child.send_signal(signal.SIGTERM)
        timer = threading.Timer(warm_seconds, escalate)
        timer.daemon = True
        timer.start()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        if not stop_requested.is_set():
            log(f"received {signal.Signals(signum).name}: warm shutdown (SIGTERM to the worker)")
        stop_requested.set()
        begin_stop()

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is not None:
            child.send_signal(signum)

    # Handlers first, so a stop that arrives while the worker is starting is not lost.
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)

    # The command comes from the image or compose file, never from a request.
    child = subprocess.Popen(argv)  # noqa: S603
    if stop_requested.is_set():
        begin_stop()

    returncode = child.wait()
    # A child ended by a signal reports -N; a shell would report 128 + N.
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
