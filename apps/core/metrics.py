"""Prometheus metrics of the web processes, and the metric objects every process shares.

Multiprocess: when `PROMETHEUS_MULTIPROC_DIR` is set (gunicorn and Celery prefork in compose),
prometheus_client writes each process's values to memory-mapped files in that folder and the
exposition below aggregates them, so a scrape sees every gunicorn worker / pool child, not only
the one that answered. The folder is emptied when gunicorn / the Celery worker starts
(lexiscore/gunicorn_conf.py, workers/metrics.py) and a dead process's live gauges are dropped.
Without the variable (tests, `manage.py runserver`) one in-process registry is used.

Exposure: `/metrics` on web answers only with `Authorization: Bearer <METRICS_TOKEN>` and is
disabled (404) when no token is set. It is served by `MetricsMiddleware` before the security,
host and session middleware, so Prometheus can scrape `http://web:8000/metrics` inside the compose
network without the HTTPS redirect or an ALLOWED_HOSTS entry, and a scrape touches no session.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Latency buckets dense around the 200 ms p95 objective.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 30)

# ---- web --------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "lexiscore_http_requests",
    "HTTP requests answered, by view (URL name), method and status code.",
    ["view", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "lexiscore_http_request_duration_seconds",
    "Time from the first middleware to the response, by view and method.",
    ["view", "method"],
    buckets=LATENCY_BUCKETS,
)
DB_QUERIES = Counter(
    "lexiscore_db_queries", "Database queries run while answering requests, by view.", ["view"]
)
DB_QUERY_DURATION = Histogram(
    "lexiscore_db_query_duration_seconds",
    "Duration of single database queries run by requests, by view.",
    ["view"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
DB_QUERIES_PER_REQUEST = Histogram(
    "lexiscore_db_queries_per_request",
    "Database queries per request (an N+1 shows as a shift to the right), by view.",
    ["view"],
    buckets=(0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89),
)

CACHE_LOOKUPS = Counter(
    "lexiscore_cache_lookups",
    "Cache reads by result (hit or miss); see apps.core.cache.InstrumentedRedisCache.",
    ["result"],
)

# ---- workers (incremented in pool children: workers/metrics.py) -------------------------------
TASKS = Counter(
    "celery_tasks",
    "Tasks that finished executing, by task, queue and final state (SUCCESS, FAILURE, RETRY...).",
    ["task", "queue", "state"],
)
TASK_DURATION = Histogram(
    "celery_task_duration_seconds",
    "Wall time of one task execution, by task and queue.",
    ["task", "queue"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
TASK_FAILURES = Counter(
    "celery_task_failures",
    "Task executions that raised, by task, queue and exception.",
    ["task", "queue", "exception"],
)
TASK_RETRIES = Counter(
    "celery_task_retries", "Retries scheduled, by task and queue.", ["task", "queue"]
)
DEAD_LETTERS = Counter(
    "celery_dead_letter",
    "Messages dead-lettered (stored in DeadLetter), by task and queue.",
    ["task", "queue"],
)
# Labelled, like every metric here: an unlabelled one opens its multiprocess value file when this
# module is imported, before a worker has made PROMETHEUS_MULTIPROC_DIR (workers.metrics).
STORAGE_DELETE_FAILURES = Counter(
    "lexiscore_storage_delete_failures",
    "Stored-file deletes that failed and are retried: by source (`discard`: a file no row points "
    "at, `pending`: a PendingDeletion row, `retention`: audio past AUDIO_RETENTION_DAYS).",
    ["source"],
)
TRANSCRIPTION_AUDIO_SECONDS = Counter(
    "lexiscore_transcription_audio_seconds",
    "Seconds of audio transcribed, by engine and model.",
    ["engine", "model"],
)
TRANSCRIPTION_WALL_SECONDS = Counter(
    "lexiscore_transcription_wall_seconds",
    "Wall seconds spent transcribing, by engine and model.",
    ["engine", "model"],
)
TRANSCRIPTION_SPEED = Histogram(
    "lexiscore_transcription_speed_ratio",
    "Audio seconds per wall second of one transcription (higher is faster), by engine and model.",
    ["engine", "model"],
    buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)
TRANSCRIPTS_CHECKED = Counter(
    "lexiscore_transcripts_checked",
    "Completed transcripts whose quality was checked (apps/audio_jobs/quality.py), by model.",
    ["model"],
)
TRANSCRIPT_QUALITY_FLAGS = Counter(
    "lexiscore_transcript_quality_flags",
    "Quality flags raised on completed transcripts, by model, flag code and severity.",
    ["model", "code", "severity"],
)
QUALITY_RERUNS = Counter(
    "lexiscore_quality_reruns",
    "Transcripts made again with a larger model after a quality warning (`quality_rerun`), by "
    "first and second model and which was kept (rerun, original, failed).",
    ["from_model", "to_model", "kept"],
)
DIARIZATIONS = Counter(
    "lexiscore_diarizations",
    "Speaker diarizations the workers ran (`diarize`), by outcome: done, or failed (the "
    "transcript completed without speaker labels: the speaker model is missing or damaged, or "
    "the audio could not be decoded).",
    ["outcome"],
)
PII_REDACTIONS = Counter(
    "lexiscore_pii_redactions",
    "Spans redacted from completed transcripts (apps/audio_jobs/redaction.py), by entity type.",
    ["entity"],
)
PII_AUDIO_SILENCED = Counter(
    "lexiscore_pii_audio_silenced",
    "Jobs whose stored audio was replaced by a copy with the redacted spans silent, by outcome "
    "(silenced, nothing_to_silence, kept_legal_hold, failed).",
    ["outcome"],
)
SHARE_LINK_USES = Counter(
    "lexiscore_share_link_uses",
    "Requests to transcript share links, by result (served, refused: unknown, expired, revoked "
    "or switched off).",
    ["result"],
)
RETENTION_DELETIONS = Counter(
    "lexiscore_retention_deletions",
    "What the retention policies deleted, by kind (audio, job).",
    ["kind"],
)
_feed_open_streams: Gauge | None = None
_feed_open_streams_lock = threading.Lock()


def feed_open_streams() -> Gauge:
    """Live-feed streams held open (web-events). Made on first use: a gauge without labels opens
    its multiprocess file when created, and most processes (workers, web) never hold a stream,
    some importing this module before PROMETHEUS_MULTIPROC_DIR exists."""
    global _feed_open_streams
    with _feed_open_streams_lock:
        if _feed_open_streams is None:
            _feed_open_streams = Gauge(
                "lexiscore_feed_open_streams",
                "Live-feed streams held open by this server (web-events; summed over its "
                "processes).",
                multiprocess_mode="livesum",
            )
    return _feed_open_streams


GPU_MEMORY_ALLOCATED = Gauge(
    "lexiscore_gpu_memory_allocated_bytes",
    "CUDA memory held by tensors in a worker process, by device.",
    ["device"],
    multiprocess_mode="liveall",
)
GPU_MEMORY_RESERVED = Gauge(
    "lexiscore_gpu_memory_reserved_bytes",
    "CUDA memory reserved by the caching allocator in a worker process, by device.",
    ["device"],
    multiprocess_mode="liveall",
)


def view_label(request: HttpRequest) -> str:
    """The URL name (bounded cardinality), never the raw path; a path's other spelling (with or
    without its trailing slash, lexiscore/urls.py) counts under the written one."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "<unresolved>"
    return (match.view_name or match.route or "<unnamed>").removesuffix("~")


class _QueryTimer:
    """`connection.execute_wrapper` hook counting and timing the request's queries."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.durations.append(time.perf_counter() - started)


class MetricsMiddleware:
    """Count and time every request; answer `/metrics` (token-protected) itself."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == settings.METRICS_PATH:
            return metrics_response(request)
        started = time.perf_counter()
        timer = _QueryTimer()
        status = 500
        try:
            with connection.execute_wrapper(timer):
                response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            view = view_label(request)
            method = request.method if request.method in _METHODS else "OTHER"
            HTTP_REQUESTS.labels(view, method, str(status)).inc()
            HTTP_LATENCY.labels(view, method).observe(time.perf_counter() - started)
            DB_QUERIES_PER_REQUEST.labels(view).observe(len(timer.durations))
            if timer.durations:
                DB_QUERIES.labels(view).inc(len(timer.durations))
                histogram = DB_QUERY_DURATION.labels(view)
                for duration in timer.durations:
                    histogram.observe(duration)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metrics_authorized(request: HttpRequest) -> bool:
    """The request carries the metrics token (never true when none is configured)."""
    token = settings.METRICS_TOKEN
    if not token:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.encode(), token.encode())


def metrics_response(request: HttpRequest) -> HttpResponse:
    if not settings.METRICS_TOKEN:
        return HttpResponse(status=404)
    if not metrics_authorized(request):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(exposition_registry()), content_type=CONTENT_TYPE_LATEST)


def exposition_registry(*, with_platform: bool = True) -> CollectorRegistry:
    """The registry to expose: every process's values (multiprocess mode) and scrape-time gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Delegate(REGISTRY))
    if with_platform:
        registry.register(PlatformCollector())
    return registry


class _Delegate(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


class PlatformCollector(Collector):
    """Gauges read at scrape time: dependencies up, queues, dead letters pending, file deletes
    pending, disk space, backups.

    Computed by the web process that answers the scrape (one Redis round trip per queue and a
    couple of cheap queries), so Prometheus sees them even when every worker is down.
    """

    def collect(self) -> Iterator[Any]:
        from .health import run_checks

        up = GaugeMetricFamily(
            "lexiscore_dependency_up",
            "1 when the dependency answers within HEALTH_CHECK_TIMEOUT, 0 when not.",
            labels=["dependency"],
        )
        # A failed check is a 0 (run_checks logs why), never a failed scrape.
        _, results = run_checks(("database", "cache", "broker"))
        for name, result in results.items():
            up.add_metric([name], 1 if result["status"] == "ok" else 0)
        yield up
        yield from _queue_metrics()
        yield from _dead_letter_metrics()
        yield from _pending_deletion_metrics()
        yield from _disk_metrics()
        yield from _backup_metrics()


def _queue_metrics() -> Iterator[Any]:
    from .maintenance import queue_stats

    depth = GaugeMetricFamily(
        "celery_queue_length", "Messages waiting in the broker, by queue.", labels=["queue"]
    )
    age = GaugeMetricFamily(
        "celery_queue_oldest_message_age_seconds",
        "Age of the oldest waiting message (since it was published), by queue; 0 when empty.",
        labels=["queue"],
    )
    unacked = GaugeMetricFamily(
        "celery_unacked_messages", "Messages delivered to a worker and not yet acknowledged."
    )
    try:
        stats = queue_stats()
    except Exception as exc:
        logger.warning("Metrics: cannot read queue lengths: %s", exc)
        return
    if stats is None:  # not a Redis broker
        return
    for row in stats.queues:
        depth.add_metric([row.queue], row.depth)
        age.add_metric([row.queue], row.oldest_age_seconds or 0.0)
    unacked.add_metric([], stats.unacked)
    yield depth
    yield age
    yield unacked


def _dead_letter_metrics() -> Iterator[Any]:
    from .models import DeadLetter

    pending = GaugeMetricFamily(
        "lexiscore_dead_letters_pending",
        "Dead letters waiting for an operator, by queue.",
        labels=["queue"],
    )
    try:
        rows = (
            DeadLetter.objects.filter(status=DeadLetter.Status.PENDING)
            .values_list("queue")
            .order_by()
            .annotate(n=_count())
        )
        for queue, count in rows:
            pending.add_metric([queue], count)
    except Exception as exc:
        logger.warning("Metrics: cannot count dead letters: %s", exc)
        return
    yield pending


def _pending_deletion_metrics() -> Iterator[Any]:
    from .models import PendingDeletion
    from .storage import ALERT_AFTER_ATTEMPTS

    pending = GaugeMetricFamily(
        "lexiscore_storage_deletions_pending",
        "Stored files whose delete has not been confirmed yet (retried by the hourly sweep).",
    )
    failing = GaugeMetricFamily(
        "lexiscore_storage_deletions_failing",
        f"Pending file deletes that failed {ALERT_AFTER_ATTEMPTS} times or more: look at them.",
    )
    try:
        rows = PendingDeletion.objects.order_by()
        pending.add_metric([], rows.count())
        failing.add_metric([], rows.filter(attempts__gte=ALERT_AFTER_ATTEMPTS).count())
    except Exception as exc:
        logger.warning("Metrics: cannot count pending deletions: %s", exc)
        return
    yield pending
    yield failing


def _count():
    from django.db.models import Count

    return Count("pk")


def disk_paths() -> dict[str, str]:
    paths = {"tmp": settings.FILE_UPLOAD_TEMP_DIR or "/tmp", "backups": str(settings.BACKUP_DIR)}
    if settings.STORAGE_BACKEND != "s3":
        paths["media"] = str(settings.MEDIA_ROOT)
    return paths


def _disk_metrics() -> Iterator[Any]:
    free = GaugeMetricFamily(
        "lexiscore_disk_free_bytes", "Free bytes on the filesystem holding a path.", labels=["path"]
    )
    total = GaugeMetricFamily(
        "lexiscore_disk_total_bytes", "Size of the filesystem holding a path.", labels=["path"]
    )
    for name, path in disk_paths().items():
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue  # not created yet (no backup so far)
        free.add_metric([name], usage.free)
        total.add_metric([name], usage.total)
    yield free
    yield total


def _backup_metrics() -> Iterator[Any]:
    count = GaugeMetricFamily(
        "lexiscore_backup_count", "Complete, verified backups in BACKUP_DIR (0 when none)."
    )
    last = GaugeMetricFamily(
        "lexiscore_backup_last_success_timestamp_seconds",
        "When the newest complete, verified backup in BACKUP_DIR finished (Unix time; the "
        "manifest's finished_at); absent when there is none.",
    )
    finished = verified_backups_finished_at(Path(settings.BACKUP_DIR))
    count.add_metric([], len(finished))
    yield count
    if finished:
        last.add_metric([], max(finished))
        yield last


# Verdicts by (folder, manifest and dump mtime and size): a backup is read once per process, not
# at every scrape, and read again if either file changes.
_backup_verdicts: dict[tuple[str, int, int, int, int], float | None] = {}


def verified_backups_finished_at(root: Path) -> list[float]:
    """When each complete, intact backup under `root` finished (Unix time); see `backup_verdict`.

    A folder that cannot be read counts as no backup (logged): the web must see BACKUP_DIR for
    the backup alerts to mean anything, and an alert is the right answer when it does not.
    """
    from .backups import backups_list

    global _backup_verdicts
    try:
        folders = backups_list(root)
    except OSError as exc:
        logger.warning("Metrics: cannot list backups in %s: %s", root, exc)
        return []
    verdicts: dict[tuple[str, int, int, int, int], float | None] = {}
    for folder in folders:
        key = _backup_key(folder)
        if key is None:
            continue
        verdicts[key] = _backup_verdicts[key] if key in _backup_verdicts else backup_verdict(folder)
    _backup_verdicts = verdicts  # only the folders there now: bounded by BACKUP_KEEP
    return [finished for finished in verdicts.values() if finished is not None]


def _backup_key(folder: Path) -> tuple[str, int, int, int, int] | None:
    from .backups import DUMP_NAME, MANIFEST_NAME

    try:
        manifest = (folder / MANIFEST_NAME).stat()
        dump = (folder / DUMP_NAME).stat()
    except OSError:
        return None
    return (str(folder), manifest.st_mtime_ns, manifest.st_size, dump.st_mtime_ns, dump.st_size)


def backup_verdict(folder: Path) -> float | None:
    """The manifest's finished_at (Unix time) if `folder` holds a complete, intact backup.

    Complete: `backup_create` writes into `.<name>.partial/` and renames it to `<name>/` only
    after the manifest is written, so a backup in progress (or interrupted) never has a
    `lexiscore-*` folder with a manifest (`backups_list`). Intact, as far as a scrape can afford:
    the manifest parses and names this folder, records the dump's sha256, and the dump has the
    manifest's size and starts like a pg_dump custom-format archive. The sha256 itself is checked
    by `manage.py restore` (the restore drill), not at every scrape.
    """
    from .backups import DUMP_NAME, MANIFEST_NAME

    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        dump = folder / DUMP_NAME
        with dump.open("rb") as handle:
            magic = handle.read(5)
        intact = (
            manifest["name"] == folder.name
            and manifest["dump"]["file"] == DUMP_NAME
            and len(manifest["dump"]["sha256"]) == 64
            and manifest["dump"]["size"] == dump.stat().st_size
            and magic == b"PGDMP"
        )
        finished_at = datetime.fromisoformat(manifest["finished_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Metrics: backup %s is unreadable: %s", folder.name, exc)
        return None
    if not intact:
        logger.warning("Metrics: backup %s does not match its manifest", folder.name)
        return None
    return finished_at
