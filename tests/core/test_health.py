"""Liveness never touches a dependency; readiness reports each one and answers 503 on failure."""

import os
import stat

import pytest
from django.test import override_settings

from lexiscore.celery import app


def test_healthz_answers_without_any_io(client):
    # No django_db mark: any database access here would raise.
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.fixture
def redis_broker():
    """Point the app at the real Redis for the broker check (tests default to memory://)."""
    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:6379/15"
    yield
    app.conf.broker_url = previous


@pytest.mark.django_db
def test_readyz_is_ok_when_every_dependency_answers(client, redis_broker):
    response = client.get("/readyz")

    assert response.status_code == 200, response.json()
    checks = response.json()["checks"]
    assert set(checks) == {"database", "cache", "broker", "storage", "model"}
    assert all(check["status"] == "ok" for check in checks.values())


@pytest.mark.django_db
def test_readyz_reports_an_unreachable_broker(client):
    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url = previous

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["broker"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"


@pytest.mark.django_db
def test_readyz_reports_an_unreachable_cache(client, redis_broker):
    unreachable = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    with override_settings(CACHES=unreachable):
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["cache"]["status"] == "fail"
    assert "error" not in response.json()["checks"]["cache"]


@pytest.mark.django_db
@override_settings(METRICS_TOKEN="ops-token-for-tests")
def test_readyz_shows_why_a_check_failed_only_to_the_metrics_token(client):
    """The error text names hosts, ports, buckets and packages: for operators, not everyone."""
    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        anonymous = client.get("/readyz")
        wrong = client.get("/readyz", HTTP_AUTHORIZATION="Bearer not-the-token")
        operator = client.get("/readyz", HTTP_AUTHORIZATION="Bearer ops-token-for-tests")
    finally:
        app.conf.broker_url = previous

    assert anonymous.status_code == wrong.status_code == operator.status_code == 503
    assert anonymous.json()["checks"]["broker"] == {
        "status": "fail",
        "duration_ms": anonymous.json()["checks"]["broker"]["duration_ms"],
    }
    assert "error" not in wrong.json()["checks"]["broker"]
    assert "127.0.0.1:1" in operator.json()["checks"]["broker"]["error"]


@pytest.mark.django_db
@override_settings(HEALTH_CHECK_CACHE_SECONDS=60)
def test_readyz_reuses_its_last_answer_for_a_while(client, redis_broker, monkeypatch):
    from apps.core import health

    calls = []
    monkeypatch.setattr(health, "_last", None)
    monkeypatch.setitem(health.CHECKS, "database", lambda: calls.append(1))

    answers = [client.get("/readyz").status_code for _ in range(5)]

    assert answers == [200] * 5
    assert len(calls) == 1
    monkeypatch.setattr(health, "_last", None)


@pytest.mark.django_db
def test_readyz_reports_storage_that_is_not_writable(client, redis_broker, tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits: use a path under a regular file, which no one can create.
        location = tmp_path / "a-file"
        location.write_text("x")
        location = location / "media"
    else:
        location = tmp_path / "media"
        location.mkdir()
        location.chmod(stat.S_IRUSR | stat.S_IXUSR)
    storages = {
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(STORAGES=storages):
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["status"] == "fail"


@pytest.mark.django_db
def test_readyz_reports_a_missing_model(client, redis_broker, tmp_path):
    with override_settings(WHISPER_MODEL_DIRS={"tiny.en": str(tmp_path / "no-model-here")}):
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["model"]["status"] == "fail"


@pytest.mark.django_db
@override_settings(HEALTH_CHECK_TIMEOUT=0.5, METRICS_TOKEN="ops-token-for-tests")
def test_a_dependency_that_hangs_fails_its_check_in_time(client, redis_broker, monkeypatch):
    """Storage behind a dead load balancer answers nothing: /readyz says so after
    HEALTH_CHECK_TIMEOUT instead of holding the request for the client library's timeouts; the
    other checks, run at once, still report."""
    import threading
    import time

    from apps.core import health

    release = threading.Event()
    monkeypatch.setattr(health, "_last", None)
    monkeypatch.setattr(health, "_in_flight", {})
    monkeypatch.setitem(health.CHECKS, "storage", lambda: release.wait(30))
    try:
        started = time.monotonic()
        response = client.get("/readyz", HTTP_AUTHORIZATION="Bearer ops-token-for-tests")
        elapsed = time.monotonic() - started
    finally:
        release.set()
        monkeypatch.setattr(health, "_last", None)

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["storage"] == {
        "status": "fail",
        "error": "no answer within 0.5 s (running for 0 s)",
        "duration_ms": 500.0,
    }
    assert {name for name, check in checks.items() if check["status"] == "ok"} == {
        "database",
        "cache",
        "broker",
        "model",
    }
    assert elapsed < 5


@pytest.mark.django_db
@override_settings(HEALTH_CHECK_TIMEOUT=0.2)
def test_a_hung_check_runs_once_however_often_it_is_asked_for(redis_broker, monkeypatch):
    """Probes and scrapes keep asking while storage hangs: they wait on its one run rather
    than start more, so the hang holds one (daemon) thread and the other checks still answer."""
    import threading

    from apps.core import health

    release = threading.Event()
    calls = []
    monkeypatch.setattr(health, "_in_flight", {})  # no run left over from another test

    def hangs():
        calls.append(threading.current_thread())
        release.wait(30)

    monkeypatch.setitem(health.CHECKS, "storage", hangs)
    try:
        answers = [health.run_checks() for _ in range(8)]
        dependency_gauges = health.run_checks(("database", "cache", "broker"))
    finally:
        release.set()

    assert len(calls) == 1 and calls[0].daemon
    assert all(results["storage"]["status"] == "fail" for _, results in answers)
    assert all(
        results[name]["status"] == "ok"
        for _, results in answers
        for name in ("database", "cache", "broker", "model")
    )
    assert dependency_gauges[0] is True
    assert "running for" in answers[-1][1]["storage"]["error"]


@pytest.mark.django_db
def test_a_check_that_answered_runs_afresh_next_time(monkeypatch):
    from apps.core import health

    calls = []
    monkeypatch.setattr(health, "_in_flight", {})
    monkeypatch.setitem(health.CHECKS, "model", lambda: calls.append(1))

    health.run_checks(("model",))
    health.run_checks(("model",))

    assert len(calls) == 2
