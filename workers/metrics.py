"""Worker metrics: task counts, durations, failures and retries from Celery signals.

Prefork: tasks run in pool children, and the main process is the only one that lives as long as
the container. So each child writes its values to memory-mapped files in
`PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode), and the main process serves
the aggregate of all children, past and present, on `WORKER_METRICS_PORT` once the worker is
ready. Counters of a replaced child (max-tasks/max-memory per child) keep counting in the
aggregate; its live gauges (GPU memory) are dropped when it exits. The folder is emptied when the
worker starts, so a restart resets counters, which `rate()` handles. Per-child ports were the
alternative; they break as soon as a child is replaced and need a port range per worker.

Both variables are set per worker service in docker-compose.yml; without them the signal handlers
still count (in-process) but nothing is served.

Cross-job batching (`--pool threads`, WHISPER_CROSS_JOB_BATCHING): the batch scheduler lives in
the worker's main process, beside the metrics server, so `BatchSchedulerCollector` reads its
counters at scrape time (`lexiscore_whisper_batch_*`): batches, windows, batches that mixed jobs,
out-of-memory halvings, the batch size now and the windows waiting.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from celery import signals

from apps.core.metrics import (
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_RESERVED,
    PII_AUDIO_SILENCED,
    PII_REDACTIONS,
    TASK_DURATION,
    TASK_FAILURES,
    TASK_RETRIES,
    TASKS,
    TRANSCRIPT_QUALITY_FLAGS,
    TRANSCRIPTION_AUDIO_SECONDS,
    TRANSCRIPTION_SPEED,
    TRANSCRIPTION_WALL_SECONDS,
    TRANSCRIPTS_CHECKED,
)

logger = logging.getLogger(__name__)

_started: dict[str, float] = {}


def observe_transcription(
    engine: str, model: str, audio_seconds: float, wall_seconds: float
) -> None:
    """Record one finished transcription (called by apps/audio_jobs/processing.py)."""
    engine, model = engine or "unknown", model or "unknown"
    if audio_seconds <= 0 or wall_seconds <= 0:
        return
    TRANSCRIPTION_AUDIO_SECONDS.labels(engine, model).inc(audio_seconds)
    TRANSCRIPTION_WALL_SECONDS.labels(engine, model).inc(wall_seconds)
    TRANSCRIPTION_SPEED.labels(engine, model).observe(audio_seconds / wall_seconds)


def observe_quality(model: str, quality: dict[str, Any]) -> None:
    """Count one checked transcript and its quality flags (called with `completed`)."""
    model = model or "unknown"
    TRANSCRIPTS_CHECKED.labels(model).inc()
    for flag in quality.get("flags") or ():
        TRANSCRIPT_QUALITY_FLAGS.labels(
            model, str(flag.get("code", "unknown")), str(flag.get("severity", "unknown"))
        ).inc()


def observe_redaction(redaction: dict[str, Any]) -> None:
    """Count a completed job's redacted spans per entity, and what became of its audio."""
    for entity, count in (redaction.get("entities") or {}).items():
        PII_REDACTIONS.labels(str(entity)).inc(int(count))
    outcome = str(redaction.get("audio") or "")
    if outcome and outcome != "not_asked":
        PII_AUDIO_SILENCED.labels(outcome).inc()


def observe_gpu_memory() -> None:
    """Sample CUDA memory of this process, only where torch is already loaded and sees a GPU."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            GPU_MEMORY_ALLOCATED.labels(device).set(torch.cuda.memory_allocated(index))
            GPU_MEMORY_RESERVED.labels(device).set(torch.cuda.memory_reserved(index))
    except Exception:  # a metric must never fail a task
        logger.debug("Could not sample GPU memory", exc_info=True)


def _queue(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or info.get("exchange") or "unknown")


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_kwargs: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_kwargs: Any
) -> None:
    if task is None:
        return
    queue = _queue(task.request)
    TASKS.labels(task.name, queue, state or "UNKNOWN").inc()
    started = _started.pop(task_id or "", None)
    if started is not None:
        TASK_DURATION.labels(task.name, queue).observe(time.perf_counter() - started)
    observe_gpu_memory()


@signals.task_failure.connect
def _task_failed(
    sender: Any = None, exception: BaseException | None = None, **_kwargs: Any
) -> None:
    if sender is None:
        return
    TASK_FAILURES.labels(
        sender.name, _queue(sender.request), type(exception).__name__ if exception else "unknown"
    ).inc()


@signals.task_retry.connect
def _task_retried(sender: Any = None, request: Any = None, **_kwargs: Any) -> None:
    if sender is not None:
        TASK_RETRIES.labels(sender.name, _queue(request)).inc()


def _multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


@signals.celeryd_init.connect
def _reset_metric_files(**_kwargs: Any) -> None:
    """Start from empty value files (the main process opened none yet: all metrics have labels)."""
    folder = _multiprocess_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.db"):
        path.unlink(missing_ok=True)


@signals.worker_ready.connect
def _serve_metrics(**_kwargs: Any) -> None:
    port = os.environ.get("WORKER_METRICS_PORT", "")
    if not port:
        return
    if _multiprocess_dir() is None:
        logger.warning(
            "WORKER_METRICS_PORT is set without PROMETHEUS_MULTIPROC_DIR: pool "
            "children's metrics would be invisible, so none are served"
        )
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(BatchSchedulerCollector())
    start_http_server(
        int(port), addr=os.environ.get("WORKER_METRICS_ADDR", "0.0.0.0"), registry=registry
    )
    logger.info("Worker metrics served on port %s", port)


# metric name (exposed with _total), help, key in BatchScheduler.stats(), scale
_BATCH_COUNTERS = (
    (
        "lexiscore_whisper_batches",
        "Batches decoded by the cross-job batch scheduler.",
        "batches",
        1,
    ),
    (
        "lexiscore_whisper_batch_windows",
        "Audio windows (<= 30 s) decoded in batches.",
        "windows",
        1,
    ),
    (
        "lexiscore_whisper_batch_multi_job_batches",
        "Batches that held windows of more than one job.",
        "multi_job_batches",
        1,
    ),
    (
        "lexiscore_whisper_batch_out_of_memory",
        "Out-of-memory errors after which the batch size was halved (windows retried).",
        "out_of_memory",
        1,
    ),
    (
        "lexiscore_whisper_batch_out_of_memory_waits",
        "Single windows that ran out of memory and were tried again after a wait.",
        "out_of_memory_waits",
        1,
    ),
    (
        "lexiscore_whisper_batch_isolation_retries",
        "Failed batches retried window by window to find the job at fault.",
        "isolation_retries",
        1,
    ),
    (
        "lexiscore_whisper_batch_failed_windows",
        "Windows whose decoding failed (their job fails).",
        "failed_windows",
        1,
    ),
    (
        "lexiscore_whisper_batch_dropped_windows",
        "Queued windows dropped because their job was cancelled, failed or timed out.",
        "dropped_windows",
        1,
    ),
    (
        "lexiscore_whisper_language_detection_batches",
        "Batches of language detection (first windows of jobs whose language is unknown).",
        "detection_batches",
        1,
    ),
    (
        "lexiscore_whisper_language_detections",
        "Jobs whose language was detected in those batches.",
        "detections",
        1,
    ),
    (
        "lexiscore_whisper_batch_model_seconds",
        "Time spent in batched model calls (decoding and language detection).",
        "model_ms",
        0.001,
    ),
    (
        "lexiscore_whisper_model_warm_ups",
        "Warm-up batches run on every model stream before the first job (preload, on CUDA).",
        "warm_ups",
        1,
    ),
    (
        "lexiscore_whisper_model_warm_up_failures",
        "Model warm-ups that failed or timed out (jobs then pay the first batches' costs).",
        "warm_up_failures",
        1,
    ),
    (
        "lexiscore_whisper_prepare_pool_replacements",
        "Audio preparation pools replaced after one of their processes died.",
        "preparation_pool_replacements",
        1,
    ),
    (
        "lexiscore_whisper_prepare_stuck_kills",
        "Preparation processes killed because a file still ran long after its job gave up on it.",
        "preparation_stuck_kills",
        1,
    ),
    (
        "lexiscore_whisper_prepare_long_files",
        "Files too long to prepare at once, prepared in their job's thread instead.",
        "long_files_prepared_in_thread",
        1,
    ),
)


class BatchSchedulerCollector:
    """The counters of this process's cross-job batch schedulers, read at scrape time."""

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from workers.engines import loaded_engines
        from workers.engines.batching import BatchScheduler

        labels = ["profile", "device"]
        counters = {
            name: CounterMetricFamily(name, text, labels=labels)
            for name, text, _key, _scale in _BATCH_COUNTERS
        }
        size = GaugeMetricFamily(
            "lexiscore_whisper_batch_size",
            "Largest batch the scheduler forms now (halved after out-of-memory).",
            labels=labels,
        )
        queued = GaugeMetricFamily(
            "lexiscore_whisper_batch_queued_windows",
            "Windows waiting for a batch.",
            labels=labels,
        )
        processes = GaugeMetricFamily(
            "lexiscore_whisper_prepare_processes",
            "Processes preparing audio (decoding, VAD, features); 0: the job threads do it. "
            "vad: the VAD they run (torch or onnx).",
            labels=[*labels, "vad"],
        )
        prepared = CounterMetricFamily(
            "lexiscore_whisper_prepared_files",
            "Files decoded and split for cross-job batching, by the VAD that split them "
            "(torch, onnx, or none when the job asked for no VAD).",
            labels=[*labels, "vad"],
        )
        for engine in loaded_engines():
            if not isinstance(engine, BatchScheduler):
                continue
            stats = engine.stats()
            values = [engine.profile, engine.device]
            for vad, count in sorted(stats["prepared_files_by_vad"].items()):
                prepared.add_metric([*values, vad], count)
            for name, _text, key, scale in _BATCH_COUNTERS:
                counters[name].add_metric(values, stats[key] * scale)
            size.add_metric(values, stats["batch_size"])
            queued.add_metric(values, stats["queued_windows"])
            processes.add_metric([*values, stats["prepare_vad"]], stats["prepare_processes"])
        yield from counters.values()
        yield size
        yield queued
        yield processes
        yield prepared


@signals.worker_process_shutdown.connect
def _forget_live_gauges(pid: int | None = None, **_kwargs: Any) -> None:
    if _multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())
