"""Temp files left behind by killed processes are swept: by every worker and by gunicorn's
master in their own container's folder, not only by the worker that runs the hourly task."""

from __future__ import annotations

import os
import runpy
import threading
import time
from pathlib import Path

from apps.core import tempfiles
from apps.core.maintenance import temp_files_cleanup
from apps.core.tempfiles import start_sweeping, sweep_temp_dir

ROOT = Path(__file__).resolve().parents[2]
DAY = 24 * 60 * 60


def _aged(path: Path, seconds: float) -> Path:
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def _leftovers(folder: Path) -> dict[str, Path]:
    """A killed job's spooled audio folder, a killed upload, a backup's temp file (all 2 days
    old), the same fresh, and someone else's old file."""
    (folder / "lexiscore-audio-old").mkdir()
    (folder / "lexiscore-audio-old" / "audio.wav").write_bytes(b"x")
    entries = {
        "old job": folder / "lexiscore-audio-old",
        "old upload": folder / "tmpab12.upload.mp3",
        "old backup": folder / "lexiscore-backup-1.dump",
        "fresh job": folder / "lexiscore-audio-fresh",
        "fresh upload": folder / "tmpcd34.upload.wav",
        "not ours": folder / "systemd-private-1",
    }
    for name, path in entries.items():
        if not path.exists():
            path.write_bytes(b"x")
        if not name.startswith("fresh"):
            _aged(path, 2 * DAY)
    return entries


def _wait_until_gone(*paths: Path) -> None:
    deadline = time.monotonic() + 5
    while any(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_sweep_deletes_only_the_platforms_old_entries(tmp_path):
    entries = _leftovers(tmp_path)

    removed = sweep_temp_dir(tmp_path, DAY)

    assert removed == 3
    assert sorted(name for name, path in entries.items() if path.exists()) == [
        "fresh job",
        "fresh upload",
        "not ours",
    ]


def test_a_missing_folder_is_logged_not_raised(tmp_path, caplog):
    assert sweep_temp_dir(tmp_path / "gone", DAY) == 0
    assert "Could not list temp folder" in caplog.text


def test_the_cleanup_task_sweeps_the_configured_folder(settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    settings.TEMP_FILE_MAX_AGE_SECONDS = DAY
    entries = _leftovers(tmp_path)

    assert temp_files_cleanup() == 3
    assert not entries["old job"].exists() and entries["fresh job"].exists()


def test_sweeping_runs_at_once_then_on_its_interval_and_survives_a_failing_sweep():
    calls: list[float] = []
    ran_three_times = threading.Event()

    def sweep() -> int:
        calls.append(time.monotonic())
        if len(calls) >= 3:
            ran_three_times.set()
        if len(calls) == 1:
            raise OSError("disk went away")
        return 0

    stop = start_sweeping(sweep, interval=0.05)
    try:
        assert ran_three_times.wait(5)
    finally:
        stop.set()
    assert calls[1] - calls[0] >= 0.04


def test_every_celery_worker_sweeps_its_own_folder_when_it_starts(settings, tmp_path, monkeypatch):
    from workers.maintenance import _sweep_own_temp_folder

    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    settings.TEMP_FILE_MAX_AGE_SECONDS = DAY
    entries = _leftovers(tmp_path)
    started: list[threading.Event] = []
    original = tempfiles.start_sweeping
    monkeypatch.setattr(
        tempfiles, "start_sweeping", lambda sweep: started.append(original(sweep)) or started[-1]
    )

    try:
        _sweep_own_temp_folder(sender=None)
        _wait_until_gone(entries["old job"], entries["old upload"], entries["old backup"])
    finally:
        for stop in started:
            stop.set()

    assert not entries["old job"].exists() and not entries["old upload"].exists()
    assert entries["fresh upload"].exists() and entries["not ours"].exists()


def test_gunicorns_master_sweeps_its_containers_folder_when_it_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("FILE_UPLOAD_TEMP_DIR", str(tmp_path))
    monkeypatch.setenv("TEMP_FILE_MAX_AGE_SECONDS", str(DAY))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    entries = _leftovers(tmp_path)
    started: list[threading.Event] = []
    original = tempfiles.start_sweeping
    monkeypatch.setattr(
        tempfiles, "start_sweeping", lambda sweep: started.append(original(sweep)) or started[-1]
    )
    conf = runpy.run_path(str(ROOT / "lexiscore" / "gunicorn_conf.py"))

    try:
        conf["on_starting"](server=None)
        _wait_until_gone(entries["old job"], entries["old upload"], entries["old backup"])
    finally:
        for stop in started:
            stop.set()

    assert not entries["old upload"].exists() and not entries["old job"].exists()
    assert entries["fresh job"].exists() and entries["not ours"].exists()
