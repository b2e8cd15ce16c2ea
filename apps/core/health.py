"""Liveness and readiness.

`/healthz` answers as long as the process can serve a request (no I/O). `/readyz` checks every
dependency a request or job needs and answers 503 with each check's status when one fails, so a
load balancer stops sending traffic and an operator sees which part is down. Why a check failed
(its error text names hosts, ports, buckets and packages) is logged, and shown only to a caller
with the metrics token (`Authorization: Bearer <METRICS_TOKEN>`). Each process reuses its last
answer for `HEALTH_CHECK_CACHE_SECONDS`, so probes or anonymous callers cannot turn the endpoint
into a load on the database, storage and broker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_cache() -> None:
    key = f"readyz:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("cache did not return the value just written")
    cache.delete(key)


def check_broker() -> None:
    from lexiscore.celery import app

    with app.connection_for_write() as conn:
        # One try: a refused connection fails at once (a retry would wait 2 s); the check as a
        # whole is bounded by HEALTH_CHECK_TIMEOUT (run_checks).
        conn.ensure_connection(max_retries=0, timeout=settings.HEALTH_CHECK_TIMEOUT)


def check_storage() -> None:
    name = default_storage.save(f"healthcheck/{uuid.uuid4().hex}.txt", ContentFile(b"ok"))
    try:
        if not default_storage.exists(name):
            raise RuntimeError("storage did not keep the file just written")
    finally:
        default_storage.delete(name)


def check_model() -> None:
    from workers.engines.models import locate_model

    for profile in settings.WHISPER_REQUIRED_PROFILES:
        locate_model(
            profile,
            cache_dir=settings.WHISPER_MODEL_CACHE_DIR,
            model_dir=settings.WHISPER_MODEL_DIRS.get(profile),
        )


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "cache": check_cache,
    "broker": check_broker,
    "storage": check_storage,
    "model": check_model,
}


# The checks run in threads of their own, at once, each given HEALTH_CHECK_TIMEOUT: a dependency
# that hangs (storage behind a dead load balancer, a database that accepts connections and then
# stalls) gives "fail" in time instead of holding the request, and every request waiting on the
# answer, for its client library's own timeouts (a minute or more for boto). At most one run of
# each check is in flight per process: a call while one is still running waits for that run
# (within its own deadline) instead of starting another, so a hung dependency holds one thread,
# not one per call, and the other checks never queue behind it. The threads are daemons: a hung
# check never holds up a process that is exiting (a gunicorn worker being recycled).
_in_flight: dict[str, tuple[float, Future[float]]] = {}
_in_flight_lock = threading.Lock()


def _timed(check: Callable[[], None]) -> float:
    started = time.monotonic()
    try:
        check()
    finally:
        # This thread's database connections go back (to the pool) between runs.
        connections.close_all()
    return time.monotonic() - started


def _run_in_thread(name: str, future: Future[float]) -> None:
    try:
        future.set_result(_timed(CHECKS[name]))
    except BaseException as exc:  # handed to the caller, which reports it
        future.set_exception(exc)


def _start(name: str) -> tuple[float, Future[float]]:
    """The run of check `name` in flight, started now if none is."""
    with _in_flight_lock:
        running = _in_flight.get(name)
        if running is not None and not running[1].done():
            return running
        future: Future[float] = Future()
        run = _in_flight[name] = (time.monotonic(), future)
    threading.Thread(
        target=_run_in_thread, args=(name, future), name=f"readyz-{name}", daemon=True
    ).start()
    return run


def run_checks(names: Iterable[str] | None = None) -> tuple[bool, dict[str, Any]]:
    """Run the named checks (all by default) at once; each fails when it raises or takes longer
    than ``HEALTH_CHECK_TIMEOUT`` seconds."""
    timeout = float(settings.HEALTH_CHECK_TIMEOUT)
    started = time.monotonic()
    runs = {name: _start(name) for name in (names or CHECKS)}
    results: dict[str, Any] = {}
    healthy = True
    for name, (run_started, future) in runs.items():
        try:
            seconds = future.result(timeout=max(0.0, started + timeout - time.monotonic()))
        except FutureTimeout:
            healthy = False
            running_for = time.monotonic() - run_started
            logger.warning(
                "Readiness check %s has not answered for %.1f s (limit %s s)",
                name,
                running_for,
                timeout,
            )
            results[name] = {
                "status": "fail",
                "error": f"no answer within {timeout:g} s (running for {running_for:.0f} s)",
            }
            seconds = timeout
        except Exception as exc:  # every failure is a "not ready" answer, never a 500
            healthy = False
            logger.warning("Readiness check %s failed: %s", name, exc)
            results[name] = {"status": "fail", "error": f"{type(exc).__name__}: {exc}"[:300]}
            seconds = time.monotonic() - started
        else:
            results[name] = {"status": "ok"}
        results[name]["duration_ms"] = round(seconds * 1000, 1)
    return healthy, results


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


_last: tuple[float, bool, dict[str, Any]] | None = None
_last_lock = threading.Lock()


def cached_checks() -> tuple[bool, dict[str, Any]]:
    """`run_checks`, at most once per `HEALTH_CHECK_CACHE_SECONDS` per process (one caller runs
    them while concurrent callers wait for its answer)."""
    global _last
    ttl = float(settings.HEALTH_CHECK_CACHE_SECONDS)
    with _last_lock:
        if _last is not None and time.monotonic() - _last[0] < ttl:
            return _last[1], _last[2]
        healthy, results = run_checks()
        _last = (time.monotonic(), healthy, results)
        return healthy, results


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    from apps.core.metrics import metrics_authorized

    healthy, results = cached_checks()
    if not metrics_authorized(request):
        results = {
            name: {k: v for k, v in check.items() if k != "error"}
            for name, check in results.items()
        }
    return JsonResponse(
        {"status": "ok" if healthy else "fail", "checks": results}, status=200 if healthy else 503
    )
