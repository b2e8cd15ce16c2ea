"""Load a transcription worker's models when it starts rather than with its first job.

A GPU worker (``--pool threads``, cross-job batching) otherwise loads its model, and spawns most
of its preparation processes, during the first burst of jobs after every start, deploy or
recycle: on an H200 the first 100-job burst of a fresh process ran at ~2600x real time against
3100-4200x once warm (docs/benchmarks.md). With ``WHISPER_PRELOAD_PROFILES`` set, the worker
loads those profiles' engines in a background thread as soon as it is ready, in the order
given (put the busiest first), and calls each engine's ``warm``: the batching engine spawns
every preparation process (``PreparationPool.start_all``, which waits for nothing and holds no
process back) and, on CUDA, runs one warm-up batch on every model stream
(``BatchScheduler.warm_model``). On an H100, with the processes started but no model warm-up,
the first burst still ran at 2400-2620x against 3017-3207x.

Jobs keep running meanwhile. ``get_engine`` has one load lock per configuration: a job for a
model already loaded (or loading nothing) goes on while ``base`` loads; a job for the model being
loaded waits for that one load and shares it. A profile that fails to load is logged, and loads
(and fails) with its first job as before.

Only for pools whose tasks run in the worker's own process (``threads``, ``solo``). In a
prefork pool tasks run in forked children, so a model loaded in the parent would not serve
them; the setting is then ignored, with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import signals

logger = logging.getLogger(__name__)


def preload(profiles: list[str]) -> dict[str, str]:
    """Load each profile's engine as jobs would get it (``engine_from_settings``) and spawn its
    preparation processes; what happened to each profile ("loaded ..." or why not)."""
    from django.conf import settings

    from apps.audio_jobs.processing import engine_from_settings
    from workers.engines import DEFAULT_MAX_ENGINES
    from workers.engines.errors import ProfileError
    from workers.engines.models import get_profile

    if len(profiles) > DEFAULT_MAX_ENGINES:
        logger.warning(
            "WHISPER_PRELOAD_PROFILES names %d profiles but a worker keeps %d loaded: the first "
            "ones are evicted again",
            len(profiles),
            DEFAULT_MAX_ENGINES,
        )
    outcome: dict[str, str] = {}
    for profile in profiles:
        try:
            get_profile(profile)
        except ProfileError as exc:
            logger.error("WHISPER_PRELOAD_PROFILES: %s", exc)
            outcome[profile] = f"unknown: {exc}"
            continue
        started = time.monotonic()
        try:
            engine = engine_from_settings(settings.WHISPER_ENGINE, profile)
        except Exception as exc:
            logger.exception("Could not preload %s; it loads with its first job", profile)
            outcome[profile] = f"failed: {exc}"
            continue
        warm = getattr(engine, "warm", None)
        try:
            processes = warm() if warm is not None else 0
        except Exception:
            logger.exception("%s is loaded; its preparation processes start on demand", profile)
            processes = 0
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
            "WHISPER_PRELOAD_PROFILES is ignored: this worker's pool (%s) does not run tasks in "
            "the worker's own process",
            type(getattr(sender, "pool", None)).__module__,
        )
        return
    threading.Thread(target=preload, args=(profiles,), name="whisper-preload", daemon=True).start()
