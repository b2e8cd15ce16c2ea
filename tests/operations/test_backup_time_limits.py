"""The nightly backup runs under time limits of its own, not Celery's 10-minute default, and a
backup stopped by its time limit leaves no half-written folder behind."""

from __future__ import annotations

import os
import shutil
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


def test_a_partial_folder_is_deleted_only_once_its_writer_is_gone_however_long_it_ran(
    tmp_path, settings
):
    """A writer holds a lock while it writes: a `manage.py backup` running longer than the task's
    hard limit keeps its folder; a killed one's (its lock file left, no holder) goes at once."""
    import fcntl

    now = datetime.now(UTC)
    hard = backups.backup_time_limits()[1]

    def partial(started: datetime) -> Path:
        path = tmp_path / f".lexiscore-{started.strftime(backups.NAME_TIME_FORMAT)}.partial"
        path.mkdir()
        return path

    slow_manual = partial(now - timedelta(seconds=hard + 3600))
    writer = backups._writer_lock(slow_manual)  # a live writer, past every time limit
    killed_just_now = partial(now - timedelta(seconds=30))
    backups._lock_path(killed_just_now).write_text("")  # its writer died holding nothing
    try:
        removed = backups.partials_remove_stale(tmp_path)
        assert slow_manual.exists()
        assert not killed_just_now.exists()
        assert not backups._lock_path(killed_just_now).exists()
        assert removed == [killed_just_now.name]
    finally:
        fcntl.flock(writer, fcntl.LOCK_UN)
        writer.close()
    assert backups.partials_remove_stale(tmp_path) == [slow_manual.name]  # once its writer ends


def test_the_nightly_task_clears_killed_backups_first_even_when_its_own_backup_fails(
    tmp_path, settings, monkeypatch
):
    """Night after night a backup killed at its hard limit left a near-full dump: cleared only
    after a success, they would fill the disk, and then no backup could succeed."""
    from workers import maintenance

    settings.BACKUP_DIR = str(tmp_path)
    left = tmp_path / ".lexiscore-20260101T000000000000Z.partial"
    left.mkdir()
    backups._lock_path(left).write_text("")

    def fails(**kwargs):
        raise backups.BackupError("pg_dump failed: disk full")

    monkeypatch.setattr(backups, "backup_create", fails)
    with pytest.raises(backups.BackupError):
        maintenance.backup_database.run()

    assert not left.exists()


def test_an_orphaned_lock_file_goes_and_a_live_writers_lock_stays(tmp_path):
    """A writer killed after deleting its folder leaves only its lock file."""
    gone = tmp_path / ".lexiscore-20260101T000000000000Z.partial"
    backups._lock_path(gone).write_text("")
    starting = tmp_path / ".lexiscore-20260101T000001000000Z.partial"
    writer = backups._writer_lock(starting)  # locked, its folder not made yet
    try:
        backups.partials_remove_stale(tmp_path)
        assert not backups._lock_path(gone).exists()
        assert backups._lock_path(starting).exists()
    finally:
        writer.close()


def test_a_partial_folder_that_cannot_be_deleted_does_not_stop_the_nightly_backup(
    tmp_path, settings, monkeypatch
):
    from workers import maintenance

    settings.BACKUP_DIR = str(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError("owned by root")

    written = []
    monkeypatch.setattr(backups, "partials_remove_stale", refuse)
    monkeypatch.setattr(backups, "backup_create", lambda: written.append(1) or tmp_path / "b")
    monkeypatch.setattr(backups, "backups_prune", lambda **kwargs: [])

    assert maintenance.backup_database.run() == "b"
    assert written == [1]


def test_a_lock_file_deleted_between_its_open_and_its_lock_is_locked_again(tmp_path, monkeypatch):
    """A prune deleting the lock file in that moment left the writer holding a lock on a file
    no longer at the path, and its live folder unprotected."""
    import fcntl

    partial = tmp_path / ".lexiscore-20260101T000000000000Z.partial"
    real_flock = fcntl.flock
    calls = []

    def flock_after_a_prune(handle, operation):
        if not calls:
            backups._lock_path(partial).unlink()  # the prune, in between
        calls.append(operation)
        return real_flock(handle, operation)

    monkeypatch.setattr(backups.fcntl, "flock", flock_after_a_prune)
    writer = backups._writer_lock(partial)
    monkeypatch.setattr(backups.fcntl, "flock", real_flock)
    try:
        path = backups._lock_path(partial)
        assert os.fstat(writer.fileno()).st_ino == os.stat(path).st_ino
        assert len(calls) == 2
        partial.mkdir()
        assert backups.partials_remove_stale(tmp_path) == []  # held: kept
    finally:
        writer.close()


def test_a_partial_folder_that_cannot_be_deleted_spares_the_others_and_raises_nothing(
    tmp_path, monkeypatch
):
    stuck, other = (tmp_path / f".lexiscore-2026010{n}T000000000000Z.partial" for n in (1, 2))
    for folder in (stuck, other):
        folder.mkdir()
        backups._lock_path(folder).write_text("")
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if Path(path) == stuck:
            raise PermissionError("owned by root")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(backups.shutil, "rmtree", rmtree)

    assert backups.partials_remove_stale(tmp_path) == [other.name]
    assert stuck.exists() and not other.exists()


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
    """A hard time limit or the OOM killer runs no cleanup: a command started through
    `dying_with_parent` (as pg_dump is) is killed with its parent instead of running on."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    command = backups.dying_with_parent(["sleep", "60"])
    assert command[:3] == [shutil.which("setpriv"), "--pdeathsig", "KILL"]
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, pathlib;"
            f"child = subprocess.Popen({command!r});"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid));"
            "child.wait()",
        ]
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    time.sleep(0.3)  # setpriv has set the signal and become `sleep`

    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)

    assert not _alive(child)
