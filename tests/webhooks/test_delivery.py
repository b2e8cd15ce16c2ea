"""Deliveries to a real HTTP receiver on loopback: contract, retries, 410, disabling, email."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from django.utils import timezone

from apps.accounts.models import Role
from apps.webhooks import services
from apps.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from tests.factories import member
from workers import webhooks as webhook_tasks


def endpoint_for(organisation, url, events=("job.completed",)) -> WebhookEndpoint:
    return services.endpoint_create(
        organisation=organisation, user=None, url=url, event_types=list(events)
    )


def make_due(delivery: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def try_repeatedly(delivery: WebhookDelivery, tries: int) -> list[float]:
    """Try the delivery `tries` times, each retry made due at once; the delays it was
    rescheduled by, in seconds (the delivery is refreshed)."""
    delays = []
    for _ in range(3):
        before = timezone.now()
        services.delivery_attempt(delivery_id=str(delivery.pk))
        delivery.refresh_from_db()
        if delivery.next_attempt_at:
            delays.append((delivery.next_attempt_at - before).total_seconds())
            make_due(delivery)
    return delays


def test_a_delivery_is_signed_and_verifies_with_the_documented_code(
    admin, loopback, receiver, documented_verify
):
    endpoint = endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={"job_id": "j1"}
    )[0]

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    assert status == DeliveryStatus.SUCCEEDED
    request = receiver.requests[0]
    assert request.headers["webhook-id"] == delivery.event_id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 10
    assert request.headers["webhook-signature"].startswith("v1,")
    assert documented_verify(endpoint.secret, request.headers, request.body) is True
    assert documented_verify(endpoint.secret, request.headers, request.body + b" ") is False
    assert request.json()["type"] == "job.completed"
    assert request.json()["data"] == {"job_id": "j1"}
    assert request.json()["id"] == delivery.event_id


def test_a_failed_delivery_is_rescheduled_in_the_database_with_the_same_webhook_id(
    admin, loopback, receiver, documented_verify, settings
):
    settings.WEBHOOK_RETRY_SCHEDULE = [10, 100, 1000]
    endpoint = endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(500, {}), (503, {}), (200, {})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    delays = try_repeatedly(delivery, 3)

    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.attempts == 3
    assert 8 <= delays[0] <= 12.5 and 80 <= delays[1] <= 120.5  # schedule +-20 % jitter
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert all(documented_verify(endpoint.secret, r.headers, r.body) for r in receiver.requests)
    assert [a.status_code for a in delivery.log.all()] == [500, 503, 200]


def test_a_delivery_not_yet_due_is_not_sent(admin, loopback, receiver):
    endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(500, {})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    services.delivery_attempt(delivery_id=str(delivery.pk))

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    assert status == "skipped"
    assert len(receiver.requests) == 1


def test_the_last_failure_of_the_schedule_fails_the_delivery(admin, loopback, receiver, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [1, 1]
    endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(500, {})] * 3
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    for _ in range(3):
        make_due(delivery)
        services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 3
    assert delivery.next_attempt_at is None


def test_retry_after_is_honoured(admin, loopback, receiver, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [5]
    endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(429, {"Retry-After": "600"})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    before = timezone.now()

    services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert 599 <= (delivery.next_attempt_at - before).total_seconds() <= 605


def test_410_gone_disables_the_endpoint(admin, loopback, receiver):
    endpoint = endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(410, {})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    services.delivery_attempt(delivery_id=str(delivery.pk))

    endpoint.refresh_from_db()
    delivery.refresh_from_db()
    assert endpoint.is_active is False
    assert "410" in endpoint.disabled_reason
    assert delivery.status == DeliveryStatus.FAILED
    assert (
        services.event_publish(organisation=admin.organisation, event_type="job.completed", data={})
        == []
    )


def test_a_long_failing_endpoint_is_disabled_and_its_admins_emailed(
    admin, loopback, receiver, settings, django_capture_on_commit_callbacks, mailoutbox
):
    from lexiscore.celery import app

    settings.WEBHOOK_DISABLE_AFTER_FAILURES = 3
    settings.WEBHOOK_DISABLE_AFTER_SECONDS = 3600
    plain = member(Role.MEMBER, organisation=admin.organisation, email="plain@example.com")
    endpoint = endpoint_for(admin.organisation, receiver.url)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        consecutive_failures=2, failing_since=timezone.now() - timedelta(hours=2)
    )
    receiver.answers = [(500, {})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.delivery_attempt(delivery_id=str(delivery.pk))
    finally:
        app.conf.task_always_eager = False

    endpoint.refresh_from_db()
    assert endpoint.is_active is False
    assert "3 consecutive failed deliveries" in endpoint.disabled_reason
    assert [m.to for m in mailoutbox] == [[admin.user.email]]
    assert plain.user.email not in mailoutbox[0].to
    assert receiver.url in mailoutbox[0].body
    assert "/api/v1/notifications/unsubscribe?token=" in mailoutbox[0].body


def test_a_disabled_endpoint_gets_no_request(admin, loopback, receiver):
    endpoint = endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    services.endpoint_disable(endpoint=endpoint, reason="test", actor="system")

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    assert status == DeliveryStatus.FAILED
    assert receiver.requests == []


def test_nothing_is_sent_for_a_deactivated_organisation(admin, loopback, receiver):
    endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    type(admin.organisation).objects.filter(pk=admin.organisation.pk).update(is_active=False)

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert status == DeliveryStatus.FAILED
    assert delivery.last_error == "The organisation is deactivated."
    assert receiver.requests == []


def test_a_rotated_secret_signs_with_both_secrets_during_the_overlap(
    admin, loopback, receiver, documented_verify
):
    endpoint = endpoint_for(admin.organisation, receiver.url)
    old_secret = endpoint.secret
    services.endpoint_rotate_secret(endpoint=endpoint)
    delivery = services.endpoint_send_test(endpoint=endpoint)

    services.delivery_attempt(delivery_id=str(delivery.pk))

    request = receiver.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert documented_verify(endpoint.secret, request.headers, request.body)
    assert documented_verify(old_secret, request.headers, request.body)
    assert request.json()["type"] == "webhook.test"


def test_a_timeout_is_a_failed_try(admin, loopback, receiver, settings):
    settings.WEBHOOK_TOTAL_TIMEOUT = 0.5
    endpoint_for(admin.organisation, receiver.url)
    receiver.delay = 2.0
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert "timed out" in delivery.last_error.lower() or "Timeout" in delivery.last_error
    assert delivery.last_status_code is None


def test_the_beat_sweep_publishes_due_deliveries_without_countdowns(
    admin, loopback, receiver, monkeypatch
):
    endpoint_for(admin.organisation, receiver.url)
    services.event_publish(organisation=admin.organisation, event_type="job.completed", data={})
    published = []
    monkeypatch.setattr(
        webhook_tasks.deliver,
        "apply_async",
        lambda args=None, **options: published.append((args, options)),
    )

    count = webhook_tasks.send_due_deliveries()

    assert count == 1
    assert set(published[0][1]) == {"kwargs"}  # the sweep's mark; no countdown, no eta
    assert "countdown" not in published[0][1] and "eta" not in published[0][1]


def capture_publishes(monkeypatch) -> list:
    published: list = []
    monkeypatch.setattr(
        webhook_tasks.deliver,
        "apply_async",
        lambda args=None, kwargs=None, **options: published.append((args, kwargs or {})),
    )
    return published


def test_a_backed_up_queue_gets_each_delivery_once_per_lease_not_once_per_sweep(
    admin, loopback, receiver, monkeypatch, settings
):
    """Nothing consumes the queue (workers down): the sweep runs every 15 s, but a delivery is
    published again only after WEBHOOK_CLAIM_LEASE_SECONDS (its message may have been lost)."""
    endpoint_for(admin.organisation, receiver.url)
    settings.WEBHOOK_CLAIM_LEASE_SECONDS = 300
    services.event_publish(organisation=admin.organisation, event_type="job.completed", data={})
    published = capture_publishes(monkeypatch)

    counts = [webhook_tasks.send_due_deliveries() for _ in range(4)]
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    again = webhook_tasks.send_due_deliveries()

    assert counts == [1, 0, 0, 0]
    assert again == 1
    assert len(published) == 2


def test_the_swept_message_is_delivered_once_and_a_stale_copy_is_skipped(
    admin, loopback, receiver, monkeypatch
):
    endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    published = capture_publishes(monkeypatch)
    webhook_tasks.send_due_deliveries()
    [(args, kwargs)] = published

    # The event's own message (no mark) comes late, after the sweep marked the delivery.
    stale = webhook_tasks.deliver.run(str(delivery.pk))
    swept = webhook_tasks.deliver.run(*args, **kwargs)
    again = webhook_tasks.deliver.run(*args, **kwargs)

    assert (stale, swept, again) == ("skipped", DeliveryStatus.SUCCEEDED, "skipped")
    assert len(receiver.requests) == 1


def test_a_delivery_the_broker_refused_is_due_again_at_once(admin, loopback, receiver, monkeypatch):
    endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    def refuse(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(webhook_tasks.deliver, "apply_async", refuse)
    assert webhook_tasks.send_due_deliveries() == 0

    delivery.refresh_from_db()
    assert delivery.next_attempt_at <= timezone.now()  # the next sweep publishes it


def test_payload_is_json_with_id_type_timestamp_and_data(admin, loopback, receiver):
    endpoint_for(admin.organisation, receiver.url, events=("report.ready",))
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="report.ready", data={"report_id": "r"}
    )[0]

    services.delivery_attempt(delivery_id=str(delivery.pk))

    body = json.loads(receiver.requests[0].body)
    assert set(body) == {"id", "type", "timestamp", "data"}
    assert body["timestamp"].endswith("Z")
