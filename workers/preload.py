"""Load a transcription worker's models when it starts rather than with its first job.

A GPU worker (``--pool threads``, cross-job batching) otherwise loads its model, and starts its
preparation pool's processes, during the first burst of jobs after every start, deploy or
recycle: on an H200 the first 100-job burst of a fresh process ran at ~2600x real time against
3100-4200x once warm (docs/benchmarks.md). With ``WHISPER_PRELOAD_PROFILES`` set, the worker
loads those profiles' engines in a background thread as soon as it is ready and starts every
preparation process. Jobs that arrive meanwhile wait for the same engine (``get_engine``
loads each model once), as they would have without preloading. A profile that fails to load
is logged and left to load with its first job, which then reports the error as usual.

Only for pools whose tasks run in the worker's own process (``threads``, ``solo``). In a
prefork pool the tasks run in forked children, so a model loaded in the parent would only be
copied into them; there the setting is ignored with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import signals

logger = logging.getLogger(__name__)


def preload(profiles: list[str]) -> dict[str, str]:
    """Load each profile's engine as jobs would get it (``engine_from_settings``) and start its
    preparation processes; what happened to each profile ("loaded ..." or the error)."""
    from django.conf import settings

    from apps.audio_jobs.processing import engine_from_settings

    outcome: dict[str, str] = {}
    for profile in profiles:
        started = time.monotonic()
        try:
            engine = engine_from_settings(settings.WHISPER_ENGINE, profile)
            warm = getattr(engine, "warm", None)
            processes = warm() if warm is not None else 0
        except Exception as exc:
            logger.exception("Could not preload %s; it loads with its first job", profile)
            outcome[profile] = f"failed: {exc}"
            continue
        outcome[profile] = (
            f"loaded in {time.monotonic() - started:.1f} s, {processes} preparation processes"
        )
        logger.info("Preloaded %s: %s", profile, outcome[profile])
    return outcome


def _runs_tasks_in_this_process(consumer: Any) -> bool:
    module = type(getattr(consumer, "pool", None)).__module__
    return module.endswith((".thread", ".solo"))


@signals.worker_ready.connect
def _preload_on_start(sender: Any = None, **_kwargs: Any) -> None:
    from django.conf import settings

    profiles = list(settings.WHISPER_PRELOAD_PROFILES)
    if not profiles or sender is None:
        return
    if not _runs_tasks_in_this_process(sender):
        logger.warning(
            "WHISPER_PRELOAD_PROFILES is ignored: this worker's pool (%s) runs tasks in other "
            "processes",
            type(getattr(sender, "pool", None)).__name__,
        )
        return
    threading.Thread(target=preload, args=(profiles,), name="whisper-preload", daemon=True).start()
