"""Preparation-process targets for tests/engines/test_preparation.py: spawned processes import
them by name, so they live in a module, not in the test."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from workers.preparation import PreparedAudio, prepare_for_batching


def die_on_marked_files(
    path: str, vad: bool, feature_kwargs: dict[str, Any], max_windows: int
) -> PreparedAudio:
    """Kill this process (as a decoder crash would) for a file named ``*.die*``; ``*.die-once*``
    kills only the first process that sees it (its marker file is removed first);
    ``*.die-always*`` kills every process, a second after it starts (so that files submitted with
    it are in the pool when it breaks); ``*.slow*`` takes two seconds."""
    marker = Path(path + ".marker")
    if ".die-once" in path and marker.exists():
        marker.unlink()
        os._exit(3)
    if ".die-always" in path:
        time.sleep(1.0)
        os._exit(3)
    if ".slow" in path:  # still running when a die-always file kills the pool
        time.sleep(2.0)
    return prepare_for_batching(path, vad, feature_kwargs, max_windows)


def report_thread_limits(
    path: str, vad: bool, feature_kwargs: dict[str, Any], max_windows: int
) -> PreparedAudio:
    """The thread-limit variables a preparation process sees, in the file name's place."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return PreparedAudio(duration=0.0, metadata=[{name: os.environ.get(name) for name in names}])


def hang_on_marked_files(
    path: str, vad: bool, feature_kwargs: dict[str, Any], max_windows: int
) -> PreparedAudio:
    """Never return for a file named ``*.hang*`` (a decoder caught in a loop)."""
    if ".hang" in path:
        while True:
            time.sleep(1.0)
    return prepare_for_batching(path, vad, feature_kwargs, max_windows)
