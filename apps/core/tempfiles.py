"""The platform's temp files left behind by killed processes, and the sweep that deletes them.

Free of Django, so gunicorn's master process (`lexiscore/gunicorn_conf.py`) can sweep its own
container's temp folder too; Celery workers sweep theirs (`workers/maintenance.py`), and the
hourly beat task the folder of the worker that runs it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# Django's upload temp files are "tmp*.upload*"; ours carry a lexiscore- prefix.
TEMP_PREFIXES = ("lexiscore-audio-", "lexiscore-backup-")
SWEEP_INTERVAL_SECONDS = 3600.0


def sweep_temp_dir(root: Path, older_than_seconds: float) -> int:
    """Delete the platform's temp files and folders in ``root`` older than the given age; return
    how many entries went. Younger ones may belong to a running upload or job."""
    cutoff = time.time() - older_than_seconds
    removed = 0
    try:
        entries = list(root.iterdir())
    except OSError:
        logger.warning("Could not list temp folder %s", root, exc_info=True)
        return 0
    for entry in entries:
        if not (entry.name.startswith(TEMP_PREFIXES) or ".upload" in entry.name):
            continue
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            logger.warning("Could not remove temp entry %s", entry, exc_info=True)
    return removed


def start_sweeping(
    sweep: Callable[[], int], *, interval: float = SWEEP_INTERVAL_SECONDS
) -> threading.Event:
    """Call ``sweep`` now and then every ``interval`` seconds in a daemon thread (a process that
    lives for weeks still sweeps its own folder), until the returned event is set."""
    stop = threading.Event()

    def run() -> None:
        while True:
            try:
                removed = sweep()
                if removed:
                    logger.info("Removed %s stale temp entries", removed)
            except Exception:  # a failed sweep is retried next interval, never fatal
                logger.warning("Temp folder sweep failed", exc_info=True)
            if stop.wait(interval):
                return

    threading.Thread(target=run, name="temp-sweeper", daemon=True).start()
    return stop
