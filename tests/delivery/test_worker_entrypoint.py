"""docker/worker_entrypoint.py: SIGTERM is a warm shutdown that escalates to SIGQUIT in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import ROOT

ENTRYPOINT = ROOT / "docker" / "worker_entrypoint.py"

# A stand-in for a Celery worker: records the signals it gets. With `busy`, SIGTERM does not stop
# it (a task is still running); SIGQUIT always does.
FAKE_WORKER = textwrap.dedent(
    """
    import signal, sys, time
    log, busy = sys.argv[1], sys.argv[2] == "busy"

    def record(signum, frame):
        name = signal.Signals(signum).name
        with open(log, "a") as f:
            f.write(name + "\\n")
        if name == "SIGQUIT" or not busy:
            sys.exit(0)

    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGQUIT, record)
    with open(log, "a") as f:
        f.write("started\\n")
    while True:
        time.sleep(0.05)
    """
)


def start(tmp_path: Path, mode: str, warm_seconds: str) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    log = tmp_path / "signals.log"
    process = subprocess.Popen(
        [sys.executable, str(ENTRYPOINT), sys.executable, str(script), str(log), mode],
        env={**os.environ, "WORKER_WARM_SHUTDOWN_SECONDS": warm_seconds},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while not (log.exists() and "started" in log.read_text()):
        assert time.monotonic() < deadline, "the fake worker did not start"
        time.sleep(0.05)
    return process, log


def test_a_worker_that_finishes_its_task_gets_only_sigterm(tmp_path):
    process, log = start(tmp_path, "idle", warm_seconds="30")

    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=10)

    assert returncode == 0
    assert log.read_text().split() == ["started", "SIGTERM"]


def test_a_busy_worker_gets_sigquit_after_the_warm_shutdown_window(tmp_path):
    process, log = start(tmp_path, "busy", warm_seconds="0.5")

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=10)
    elapsed = time.monotonic() - started

    assert returncode == 0
    assert log.read_text().split() == ["started", "SIGTERM", "SIGQUIT"]
    assert 0.4 < elapsed < 5
    assert "sending SIGQUIT" in process.stderr.read()


def test_a_second_sigterm_does_not_restart_the_window(tmp_path):
    process, log = start(tmp_path, "busy", warm_seconds="0.5")

    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)

    assert log.read_text().split() == ["started", "SIGTERM", "SIGQUIT"]


@pytest.mark.parametrize(("code", "expected"), [("0", 0), ("3", 3)])
def test_the_exit_status_of_the_command_is_returned(code, expected):
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT), sys.executable, "-c", f"raise SystemExit({code})"],
        timeout=30,
    )

    assert result.returncode == expected


def test_a_command_killed_by_a_signal_exits_like_a_shell_would():
    result = subprocess.run(
        [
            sys.executable,
            str(ENTRYPOINT),
            sys.executable,
            "-c",
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        ],
        timeout=30,
    )

    assert result.returncode == 128 + signal.SIGKILL


def test_no_command_is_a_usage_error():
    result = subprocess.run([sys.executable, str(ENTRYPOINT)], capture_output=True, timeout=30)

    assert result.returncode == 64
