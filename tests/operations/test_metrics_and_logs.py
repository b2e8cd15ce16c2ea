"""Web metrics behind a token, queue depth from Redis, request ids and redaction in logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid

import kombu
import pytest
from prometheus_client import REGISTRY

from apps.core.logging import RedactionFilter
from apps.core.maintenance import queue_stats
from tests.support.processes import ROOT, RedisServer, free_port, wait_for


def test_metrics_is_not_found_without_a_configured_token(client, settings):
    settings.METRICS_TOKEN = ""

    response = client.get("/metrics")

    assert response.status_code == 404


def test_metrics_refuses_a_missing_or_wrong_token(client, settings):
    settings.METRICS_TOKEN = "s3cret-metrics-token"

    anonymous = client.get("/metrics")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")

    assert anonymous.status_code == 401
    assert wrong.status_code == 401


def test_http_metrics_move_after_a_request(client, settings, db):
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    labels = {"view": "healthz", "method": "GET", "status": "200"}
    before = REGISTRY.get_sample_value("lexiscore_http_requests_total", labels) or 0.0

    client.get("/healthz")
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token")

    body = response.content.decode()
    assert response.status_code == 200
    assert REGISTRY.get_sample_value("lexiscore_http_requests_total", labels) == before + 1
    assert (
        'lexiscore_http_request_duration_seconds_bucket{le="0.2",method="GET",view="healthz"}'
        in body
    )
    assert 'lexiscore_dependency_up{dependency="database"} 1.0' in body


def test_db_queries_are_counted_per_view(client, db):
    labels = {"view": "v1:token-obtain"}
    before = REGISTRY.get_sample_value("lexiscore_db_queries_total", labels) or 0.0

    # A sign-in reads the account (here: finds none) in the request's own thread.
    response = client.post(
        "/api/v1/auth/token/",
        {"email": "nobody@example.com", "password": "not-the-password"},
        content_type="application/json",
    )

    assert response.resolver_match.view_name == labels["view"]
    assert REGISTRY.get_sample_value("lexiscore_db_queries_total", labels) >= before + 1


def test_queue_depth_and_oldest_age_are_read_from_redis():
    server = RedisServer(appendonly=False).start()
    try:
        # Messages as Celery leaves them in Redis (kombu JSON envelope, headers stamped at
        # publish), published with kombu directly so no shared producer state is involved.
        queue = kombu.Queue("maintenance", kombu.Exchange("lexiscore", "direct"), "maintenance")
        with kombu.Connection(server.url) as connection:
            producer = connection.Producer(serializer="json")
            for _ in range(3):
                producer.publish(
                    {"task": "workers.maintenance.ping"},
                    exchange=queue.exchange,
                    routing_key="maintenance",
                    declare=[queue],
                    headers={"published_at": time.time()},
                )
        time.sleep(1.1)

        stats = queue_stats(broker_url=server.url)
    finally:
        server.kill()

    rows = {row.queue: row for row in stats.queues}
    assert rows["maintenance"].depth == 3
    assert 1.0 <= rows["maintenance"].oldest_age_seconds < 30
    assert rows["email"].depth == 0
    assert rows["email"].oldest_age_seconds is None


def test_every_published_task_message_is_stamped_with_its_publish_time():
    from lexiscore.celery import propagate_context

    headers: dict = {}
    before = time.time()

    propagate_context(headers=headers)

    assert before <= headers["published_at"] <= time.time()


def test_gunicorn_access_log_is_json_with_the_request_id(tmp_path):
    port = free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": "lexiscore.settings.test",
        "LOG_FORMAT": "json",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "lexiscore/gunicorn_conf.py",
            "lexiscore.wsgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    request_id = f"req-{uuid.uuid4().hex}"
    try:

        def get():
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/healthz?token=leak-me",
                headers={"X-Request-ID": request_id},
            )
            try:
                return urllib.request.urlopen(request, timeout=2).status
            except OSError:
                return None

        wait_for(get, timeout=30, what="gunicorn to answer")
        text = wait_for(
            lambda: request_id in (t := (tmp_path / "gunicorn.log").read_text()) and t,
            timeout=10,
            what="the access log line",
        )
    finally:
        process.terminate()
        process.wait(timeout=30)

    line = next(json.loads(x) for x in text.splitlines() if request_id in x)
    assert line["logger"] == "gunicorn.access"
    assert line["request_id"] == request_id
    assert "GET /healthz" in line["message"]
    assert "leak-me" not in text


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("login failed password=hunter22hunter for alice", "hunter22hunter"),
        ('payload {"api_key": "lx_live_abcdef123456"}', "lx_live_abcdef123456"),
        ("GET /callback?signature=deadbeefcafe&x=1", "deadbeefcafe"),
        ("signing with ['whsec_QUJDRUZHSElKS0xNTk9Q']", "whsec_QUJDRUZHSElKS0xNTk9Q"),
    ],
)
def test_redaction_removes_credentials_from_log_records(message, secret):
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (message,), None)
    record.password = "plain-text-password"

    RedactionFilter().filter(record)

    assert secret not in record.getMessage()
    assert "[REDACTED]" in record.getMessage()
    assert record.password == "[REDACTED]"


def test_sentry_events_carry_no_frame_locals():
    """A frame's locals can hold what no key name betrays: a webhook's signing secrets."""
    from apps.core.observability import before_send

    event = {
        "exception": {
            "values": [
                {
                    "stacktrace": {
                        "frames": [
                            {"function": "delivery_attempt", "vars": {"secrets_": "['whsec_x']"}}
                        ]
                    }
                }
            ]
        },
        "threads": None,
    }

    sent = before_send(event, {})

    frame = sent["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert frame == {"function": "delivery_attempt"}
