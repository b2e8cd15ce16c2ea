"""Reports and webhooks through the whole pipeline: API -> PostgreSQL -> Redis -> one real Celery
worker consuming the transcription, email, reports and webhooks queues, and a real beat that
publishes the sweep of due webhook retries. Real speech is transcribed by tiny.en; the worker then
builds a PDF report and mails it, and signs and delivers webhooks to a real HTTP receiver,
retrying a failed delivery on the (shortened) schedule kept in the database.
"""

from __future__ import annotations

import email
import time
from datetime import timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.webhooks.models import DeliveryStatus, WebhookDelivery
from tests.audio_jobs.conftest import speech
from tests.audio_jobs.test_pipeline import broker, mail_dir, member_auth, upload, wait_final
from tests.reports.test_reports import pdf_text
from tests.support.processes import CeleryBeat, CeleryWorker, wait_for
from tests.webhooks.conftest import documented_verify, loopback, receiver

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workers")]

# Fixtures shared with the pipeline and webhook tests.
__all__ = [
    "broker",
    "documented_verify",
    "loopback",
    "mail_dir",
    "member_auth",
    "receiver",
    "speech",
]

TEXT = "The quarterly report shows that revenue grew by twelve percent."
RETRY_SECONDS = 3  # the worker's whole WEBHOOK_RETRY_SCHEDULE: one retry, 2.4-3.6 s later


@pytest.fixture(scope="module")
def worker(broker, mail_dir, django_db_setup):
    """One worker for the module, and the beat that publishes its webhook sweeps."""
    database_name = connection.settings_dict["NAME"]
    process = CeleryWorker(
        broker_url=broker.url,
        database_name=database_name,
        queues=["transcription.cpu", "email", "reports", "webhooks"],
        include=["tests.support.module_worker"],  # it outlives each test's database flush
        env={
            # WEBHOOK_ALLOW_LOOPBACK is never read from the environment: a settings module sets it.
            "DJANGO_SETTINGS_MODULE": "tests.support.loopback_settings",
            "WEBHOOK_REQUIRE_HTTPS": "false",
            "WEBHOOK_RETRY_SCHEDULE": str(RETRY_SECONDS),
            "TEST_EMAIL_DIR": str(mail_dir),
        },
        hostname="reports-webhooks",
    )
    beat = CeleryBeat(
        broker_url=broker.url,
        database_name=database_name,
        env={"WEBHOOK_SWEEP_INTERVAL_SECONDS": "0.5"},
    )
    try:
        process.start()
        beat.start()
        yield process
    finally:
        beat.kill()
        process.kill()


@pytest.fixture(scope="module")
def clip(speech) -> Path:
    return speech.say(TEXT, speed=170)


def transcribed(client, auth, clip: Path, worker: CeleryWorker) -> TranscriptionJob:
    response = upload(client, auth, clip, language="en")
    assert response.status_code == 201, response.json()
    job = wait_final(response.json()["id"], timeout=90)
    assert job.status == JobStatus.COMPLETED, (job.error_code, worker.log()[-3000:])
    return job


def sent_mail(mail_dir: Path) -> list[EmailMessage]:
    """Every message the worker's file email backend wrote (one or more per file)."""
    separator = "\n" + "-" * 79 + "\n"
    return [
        email.message_from_string(part, policy=default_policy)
        for path in sorted(mail_dir.glob("*.log"))
        for part in path.read_text().split(separator)
        if part.strip()
    ]


def test_a_pdf_transcript_report_is_built_by_the_worker_mailed_and_downloaded(
    client, member_auth, clip, worker, mail_dir
):
    _owner, auth = member_auth
    for old in mail_dir.glob("*"):
        old.unlink()
    job = transcribed(client, auth, clip, worker)

    created = client.post(
        "/api/v1/reports/",
        {"kind": "transcript", "format": "pdf", "job_id": str(job.pk)},
        content_type="application/json",
        **auth,
    )
    assert created.status_code == 202, created.json()
    report_id = created.json()["id"]
    report = wait_for(
        lambda: (
            (body := client.get(f"/api/v1/reports/{report_id}/", **auth).json())["status"]
            in ("ready", "failed")
            and body
        ),
        timeout=60,
        interval=0.25,
        what="the report to be built",
    )
    download = client.get(report["download_url"], **auth)
    content = b"".join(download.streaming_content)

    assert created.json()["status"] == "queued"
    assert report["status"] == "ready", (report["error_message"], worker.log()[-3000:])
    assert report["attempts"] == 1
    assert report["filename"] == f"transcript-{job.pk}.pdf"
    assert download.status_code == 200
    assert download["Content-Type"] == "application/pdf"
    assert content.startswith(b"%PDF-")
    assert report["size_bytes"] == len(content)
    text = pdf_text(content)
    assert "Transcript report" in text and "tiny.en" in text
    assert "revenue" in text.lower(), text  # a word of what tiny.en heard
    ready = wait_for(
        lambda: [m for m in sent_mail(mail_dir) if "report" in m["Subject"]],
        timeout=30,
        what="the report-ready email",
    )
    assert [m["Subject"] for m in ready] == ["Your transcript report (PDF) is ready"]
    assert ready[0]["To"] == "owner@example.com"
    body = ready[0].get_body(preferencelist=("plain",)).get_content()
    assert f"/api/v1/reports/{report_id}/download" in body


def create_endpoint(client, auth, url: str) -> dict:
    response = client.post(
        "/api/v1/webhooks/endpoints/",
        {"url": url, "event_types": ["job.completed"]},
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 201, response.json()
    return response.json()


def wait_delivered(endpoint_id: str) -> WebhookDelivery:
    return wait_for(
        lambda: (
            WebhookDelivery.objects.filter(endpoint_id=endpoint_id)
            .exclude(status=DeliveryStatus.PENDING)
            .first()
        ),
        timeout=30,
        interval=0.1,
        what="the webhook delivery to finish",
    )


def test_the_worker_delivers_one_signed_job_completed_webhook(
    client, member_auth, clip, worker, loopback, receiver, documented_verify
):
    _owner, auth = member_auth
    endpoint = create_endpoint(client, auth, receiver.url)

    job = transcribed(client, auth, clip, worker)
    delivery = wait_delivered(endpoint["id"])
    time.sleep(1.5)  # three beat sweeps: a duplicate try would have been sent by now

    assert delivery.status == DeliveryStatus.SUCCEEDED, (delivery.last_error, worker.log()[-3000:])
    assert delivery.attempts == 1
    assert delivery.last_status_code == 200
    [request] = receiver.requests
    assert request.path == "/hooks"
    assert request.json()["type"] == "job.completed"
    assert request.json()["id"] == delivery.event_id == request.headers["webhook-id"]
    assert request.json()["data"]["job_id"] == str(job.pk)
    assert request.json()["data"]["status"] == "completed"
    assert documented_verify(endpoint["secret"], request.headers, request.body) is True
    assert documented_verify(endpoint["secret"], request.headers, request.body + b" ") is False


def test_a_webhook_answered_500_is_retried_by_the_worker_on_the_schedule(
    client, member_auth, clip, worker, loopback, receiver, documented_verify
):
    _owner, auth = member_auth
    receiver.answers = [(500, {})]  # then 200
    endpoint = create_endpoint(client, auth, receiver.url)

    transcribed(client, auth, clip, worker)
    waiting = wait_for(
        # After the failed try, not during the second one (its claim moves next_attempt_at on).
        lambda: WebhookDelivery.objects.filter(
            endpoint_id=endpoint["id"],
            attempts=1,
            next_attempt_at__lt=timezone.now() + timedelta(seconds=2 * RETRY_SECONDS),
        ).first(),
        timeout=30,
        interval=0.05,
        what="the first, failed try",
    )
    delivery = wait_delivered(endpoint["id"])
    time.sleep(1.5)
    listed = client.get(f"/api/v1/webhooks/endpoints/{endpoint['id']}/deliveries/", **auth)
    after = client.get(f"/api/v1/webhooks/endpoints/{endpoint['id']}/", **auth).json()

    assert waiting.status == DeliveryStatus.PENDING
    assert waiting.last_status_code == 500 and waiting.last_error == "HTTP 500"
    delay = (waiting.next_attempt_at - waiting.last_attempt_at).total_seconds()
    assert 0.8 * RETRY_SECONDS <= delay <= 1.2 * RETRY_SECONDS  # the schedule, +-20 % jitter
    assert delivery.status == DeliveryStatus.SUCCEEDED, (delivery.last_error, worker.log()[-3000:])
    assert delivery.attempts == 2
    assert delivery.next_attempt_at is None
    tries = list(delivery.log.all())
    assert [t.status_code for t in tries] == [500, 200]
    assert (tries[1].attempted_at - tries[0].attempted_at).total_seconds() >= delay
    assert len(receiver.requests) == 2
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery.event_id}
    assert all(documented_verify(endpoint["secret"], r.headers, r.body) for r in receiver.requests)
    [shown] = listed.json()["results"]
    assert shown["status"] == "succeeded" and shown["attempts"] == 2
    assert [t["status_code"] for t in shown["log"]] == [500, 200]
    assert after["consecutive_failures"] == 0 and after["is_active"] is True
