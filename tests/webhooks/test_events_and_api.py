"""Job events fan out to subscribed endpoints; the endpoint API for admins."""

from __future__ import annotations

from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.webhooks import services
from apps.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.factories import bearer, member
from workers.engines.base import Segment, TranscriptionResult, Word


def subscribe(organisation, events, url="https://hooks.customer.test/x") -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        organisation=organisation, url=url, event_types=events, secret="whsec_AAAA"
    )


def test_completing_a_job_queues_one_delivery_per_subscribed_endpoint(
    admin, django_capture_on_commit_callbacks, monkeypatch
):
    from workers import emails, webhooks

    org = admin.organisation
    first = subscribe(org, ["job.completed"])
    second = subscribe(org, ["job.completed", "job.failed"])
    subscribe(org, ["job.failed"])
    disabled = subscribe(org, ["job.completed"])
    disabled.is_active = False
    disabled.save()
    subscribe(member().organisation, ["job.completed"])
    published = []
    monkeypatch.setattr(
        webhooks.deliver, "apply_async", lambda args=None, **kw: published.append(args[0])
    )
    monkeypatch.setattr(emails.send_email, "apply_async", lambda *a, **kw: None)
    job = TranscriptionJob.objects.create(
        organisation=org,
        created_by=admin.user,
        status=JobStatus.PROCESSING,
        started_at=timezone.now(),
        original_filename="a.wav",
        duration_seconds=2.0,
    )
    result = TranscriptionResult(
        text="hello there",
        language="en",
        language_probability=0.99,
        duration=2.0,
        segments=[
            Segment(
                id=0,
                start=0.0,
                end=2.0,
                text=" hello there",
                avg_logprob=-0.1,
                no_speech_prob=0.01,
                words=[Word(0.0, 0.5, " hello", 0.9), Word(0.6, 1.0, " there", 0.9)],
            )
        ],
        engine_info={"engine": "faster-whisper", "model_profile": "tiny.en"},
    )

    with django_capture_on_commit_callbacks(execute=True):
        outcome = processing._complete(job, result, processing_seconds=1.0)

    deliveries = WebhookDelivery.objects.filter(organisation=org)
    assert outcome == "completed"
    assert sorted(d.endpoint_id for d in deliveries) == sorted([first.pk, second.pk])
    assert {d.event_type for d in deliveries} == {"job.completed"}
    assert len({d.event_id for d in deliveries}) == 1
    assert deliveries[0].payload["data"]["job_id"] == str(job.pk)
    assert sorted(published) == sorted(str(d.pk) for d in deliveries)


def test_a_rolled_back_finish_queues_nothing(admin):
    from django.db import transaction

    from apps.audio_jobs import events

    subscribe(admin.organisation, ["job.failed"])
    job = TranscriptionJob.objects.create(organisation=admin.organisation, status=JobStatus.FAILED)
    try:
        with transaction.atomic():
            events.job_finished(job)
            raise RuntimeError("rollback")
    except RuntimeError:
        pass

    assert WebhookDelivery.objects.count() == 0


def test_registration_shows_the_secret_once(client, admin_auth, monkeypatch):
    monkeypatch.setattr(services.network, "check_url", lambda url: None)

    created = client.post(
        "/api/v1/webhooks/endpoints/",
        {
            "url": "https://hooks.customer.test/x",
            "event_types": ["job.completed"],
        },
        content_type="application/json",
        **admin_auth,
    )
    endpoint_id = created.json()["id"]
    shown = client.get(f"/api/v1/webhooks/endpoints/{endpoint_id}/", **admin_auth)
    listed = client.get("/api/v1/webhooks/endpoints/", **admin_auth)

    assert created.status_code == 201
    assert created.json()["secret"].startswith("whsec_")
    assert "secret" not in shown.json()
    assert "secret" not in listed.json()["results"][0]


def test_fields_an_endpoint_does_not_take_are_refused_not_dropped(client, admin_auth):
    """A client that thinks it sets its own secret (or is_active) must learn it did not."""
    response = client.post(
        "/api/v1/webhooks/endpoints/",
        {
            "url": "https://hooks.customer.test/x",
            "event_types": ["job.completed"],
            "secret": "whsec_mine",
            "is_active": False,
        },
        content_type="application/json",
        **admin_auth,
    )

    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"secret", "is_active"}


def test_an_unsafe_url_is_refused_by_the_api_with_the_error_body(client, admin_auth):
    response = client.post(
        "/api/v1/webhooks/endpoints/",
        {
            "url": "https://169.254.169.254/",
            "event_types": ["job.completed"],
        },
        content_type="application/json",
        **admin_auth,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsafe_webhook_url"


def test_members_may_not_manage_webhooks(client, admin):
    plain = member(Role.MEMBER, organisation=admin.organisation)

    response = client.get("/api/v1/webhooks/endpoints/", **bearer(plain.user, admin.organisation))

    assert response.status_code == 403


def test_disable_rotate_test_and_delivery_log(client, admin, admin_auth):
    endpoint = subscribe(admin.organisation, ["job.completed"])
    base = f"/api/v1/webhooks/endpoints/{endpoint.pk}"

    rotated = client.post(f"{base}/rotate-secret/", **admin_auth)
    tested = client.post(f"{base}/test/", **admin_auth)
    log = client.get(f"{base}/deliveries/", **admin_auth)
    disabled = client.post(f"{base}/disable/", **admin_auth)
    refused_test = client.post(f"{base}/test/", **admin_auth)

    assert rotated.json()["secret"] != "whsec_AAAA"
    assert tested.status_code == 202 and tested.json()["event_type"] == "webhook.test"
    assert [d["event_type"] for d in log.json()["results"]] == ["webhook.test"]
    assert disabled.json()["is_active"] is False
    assert refused_test.status_code == 400
