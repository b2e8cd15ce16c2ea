"""The nightly backup runs under time limits of its own, not Celery's 10-minute default, and a
backup stopped by its time limit leaves no half-written folder behind."""

from __future__ import annotations

import os
import signal
import stat
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from apps.core import backups
from lexiscore.celery import app
from workers.maintenance import backup_database

TASK = "workers.maintenance.backup_database"


def test_the_backup_tasks_limits_follow_the_backup_settings(settings):
    settings.BACKUP_TIMEOUT_SECONDS = 1000
    settings.BACKUP_MANIFEST_TIMEOUT_SECONDS = 500
    settings.CELERY_MAX_TASK_TIME_LIMIT = 6 * 3600

    assert backups.backup_time_limits() == (1500, 1560)
    # What the worker reads (when it starts) for every message of the task, however published.
    assert (backup_database.soft_time_limit, backup_database.time_limit) == (1500, 1560)

    settings.BACKUP_TIMEOUT_SECONDS = 7200
    assert (backup_database.soft_time_limit, backup_database.time_limit) == (7700, 7760)


def test_the_backup_tasks_limits_stay_within_the_longest_any_task_may_run(settings):
    settings.BACKUP_TIMEOUT_SECONDS = 5 * 3600
    settings.BACKUP_MANIFEST_TIMEOUT_SECONDS = 2 * 3600
    settings.CELERY_MAX_TASK_TIME_LIMIT = 6 * 3600

    assert (backup_database.soft_time_limit, backup_database.time_limit) == (
        6 * 3600 - 60,
        6 * 3600,
    )


def test_by_default_a_backup_gets_its_pg_dump_timeout_and_more_not_ten_minutes(settings):
    soft, hard = backup_database.soft_time_limit, backup_database.time_limit

    assert soft > settings.BACKUP_TIMEOUT_SECONDS > settings.CELERY_TASK_SOFT_TIME_LIMIT
    assert soft < hard <= settings.CELERY_MAX_TASK_TIME_LIMIT < settings.CELERY_VISIBILITY_TIMEOUT


def test_the_time_limit_remote_control_command_can_still_set_the_limits(settings):
    task = type(app.tasks[TASK])()  # a fresh instance: the registered one stays as it is
    task.soft_time_limit, task.time_limit = 30, 40

    assert (task.soft_time_limit, task.time_limit) == (30, 40)
    assert backup_database.soft_time_limit == backups.backup_time_limits()[0]


def test_a_soft_time_limit_during_pg_dump_kills_it_and_leaves_no_partial_folder(
    transactional_db, tmp_path, monkeypatch
):
    """As in a prefork child: the pool's signal raises SoftTimeLimitExceeded wherever the task is
    (here waiting for a pg_dump that takes too long)."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    pid_file = tmp_path / "pg_dump.pid"
    _fake_pg_dump(fakebin, pid_file, seconds=60)
    monkeypatch.setenv("PATH", f"{fakebin}{os.pathsep}{os.environ['PATH']}")
    directory = tmp_path / "backups"

    def soft_limit(_signum, _frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, soft_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        with pytest.raises(SoftTimeLimitExceeded):
            backups.backup_create(directory=directory, to_storage=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert list(directory.iterdir()) == []
    pid = int(pid_file.read_text())
    assert not _alive(pid)


def test_a_soft_time_limit_while_hashing_stored_files_leaves_no_partial_folder(
    transactional_db, tmp_path, monkeypatch
):
    def too_slow(**_kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(backups, "stored_files", too_slow)

    with pytest.raises(SoftTimeLimitExceeded):
        backups.backup_create(directory=tmp_path, to_storage=False)

    assert list(tmp_path.iterdir()) == []


def test_prune_deletes_what_a_hard_killed_backup_left_once_no_backup_can_be_writing_it(
    tmp_path, settings
):
    settings.BACKUP_TIMEOUT_SECONDS = 3600
    settings.BACKUP_MANIFEST_TIMEOUT_SECONDS = 600
    now = datetime.now(UTC)
    hard = backups.backup_time_limits()[1]

    def partial(started: datetime) -> Path:
        path = tmp_path / f".lexiscore-{started.strftime(backups.NAME_TIME_FORMAT)}.partial"
        path.mkdir()
        (path / backups.DUMP_NAME).write_bytes(b"PGDMP half")
        return path

    killed = partial(now - timedelta(seconds=hard + 60))
    running = partial(now - timedelta(seconds=hard - 60))  # may still be written
    complete = tmp_path / "lexiscore-20260101T000000000000Z"
    complete.mkdir()
    (complete / backups.MANIFEST_NAME).write_text("{}")
    stranger = tmp_path / ".lexiscore-not-a-time.partial"
    stranger.mkdir()

    removed = backups.backups_prune(keep=1, directory=tmp_path, storage=False)

    assert removed == []  # only complete backups are reported as pruned
    assert not killed.exists()
    assert running.exists() and complete.exists() and stranger.exists()


def _fake_pg_dump(fakebin: Path, pid_file: Path, *, seconds: int) -> None:
    """A pg_dump that waits first (a large database), then runs the real one in its place."""
    script = fakebin / "pg_dump"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys, time
            from pathlib import Path
            Path({str(pid_file)!r}).write_text(str(os.getpid()))
            time.sleep({seconds})
            os.execv("/usr/bin/pg_dump", ["pg_dump", *sys.argv[1:]])
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet) is dead too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_tiny_ceiling_still_gives_a_soft_limit_before_the_hard_one(settings):
    settings.CELERY_MAX_TASK_TIME_LIMIT = 24

    assert backups.backup_time_limits() == (12, 24)


def test_pg_dump_dies_with_a_worker_killed_outright(tmp_path):
    """A hard time limit or the OOM killer runs no cleanup: the child started with
    `die_with_parent` (as pg_dump is) is killed with its parent instead of running on."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, pathlib;"
            "from apps.core.backups import die_with_parent;"
            "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent);"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid));"
            "child.wait()",
        ],
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "lexiscore.settings.test"},
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())

    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)

    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie is dead, waiting for its reaper
    except FileNotFoundError:
        return False
