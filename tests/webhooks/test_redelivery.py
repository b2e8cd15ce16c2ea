"""Sending a delivery again by hand (API and admin), and the audit trail of endpoint changes:
a real HTTP receiver on loopback, the documented verification code, the real audit table."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from apps.accounts.models import Role
from apps.audit.models import AuditAction, AuditEvent
from apps.webhooks import services
from apps.webhooks.models import DeliveryStatus, WebhookDelivery
from tests.factories import bearer, member
from tests.webhooks.test_delivery import endpoint_for, make_due, try_repeatedly

BASE = "/api/v1/webhooks/endpoints/"


def redeliver_url(delivery: WebhookDelivery) -> str:
    return f"{BASE}{delivery.endpoint_id}/deliveries/{delivery.pk}/redeliver/"


def failed_delivery(admin, receiver, settings) -> WebhookDelivery:
    """A delivery whose whole (one-try) schedule failed: the receiver answered 500 twice."""
    settings.WEBHOOK_RETRY_SCHEDULE = [1]
    endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(500, {}), (500, {})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={"job_id": "j1"}
    )[0]
    for _ in range(2):
        make_due(delivery)
        services.delivery_attempt(delivery_id=str(delivery.pk))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    return delivery


def test_a_failed_delivery_sent_again_reaches_the_receiver_as_the_same_event(
    client,
    admin,
    admin_auth,
    loopback,
    receiver,
    settings,
    documented_verify,
    django_capture_on_commit_callbacks,
):
    delivery = failed_delivery(admin, receiver, settings)

    with (
        mock.patch("workers.webhooks.deliver.apply_async") as publish,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = client.post(redeliver_url(delivery), **admin_auth)
    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending" and body["attempts"] == 0
    assert body["redeliveries"] == 1 and body["redelivered_at"] is not None
    assert [call.kwargs["args"] for call in publish.call_args_list] == [[str(delivery.pk)]]
    assert status == DeliveryStatus.SUCCEEDED
    first, _second, again = receiver.requests
    # The same event: its webhook-id and body; signed anew, and the signature verifies.
    assert again.headers["webhook-id"] == first.headers["webhook-id"] == delivery.event_id
    assert again.body == first.body
    endpoint = delivery.endpoint
    assert documented_verify(endpoint.secret, again.headers, again.body) is True
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.delivered_at is not None
    assert [a.status_code for a in delivery.log.all()] == [500, 500, 200]  # every try kept
    event = AuditEvent.objects.get(action=AuditAction.WEBHOOK_DELIVERY_REDELIVERED)
    assert event.actor == admin.user and event.organisation == admin.organisation
    assert event.metadata["delivery_id"] == str(delivery.pk)
    assert event.metadata["previous_status"] == "failed"
    assert event.metadata["previous_attempts"] == 2


def test_a_delivery_sent_again_gets_a_whole_new_schedule(
    client, admin, admin_auth, loopback, receiver, settings
):
    delivery = failed_delivery(admin, receiver, settings)
    settings.WEBHOOK_RETRY_SCHEDULE = [10, 100]
    receiver.answers = [(503, {}), (500, {}), (500, {})]
    client.post(redeliver_url(delivery), **admin_auth)

    delays = try_repeatedly(delivery, 3)

    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3
    assert 8 <= delays[0] <= 12.5 and 80 <= delays[1] <= 120.5
    assert delivery.log.count() == 5


def test_a_succeeded_delivery_can_be_sent_again(client, admin, admin_auth, loopback, receiver):
    endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    services.delivery_attempt(delivery_id=str(delivery.pk))

    response = client.post(redeliver_url(delivery), **admin_auth)
    services.delivery_attempt(delivery_id=str(delivery.pk))

    assert response.status_code == 202
    assert response.json()["delivered_at"] is None  # until the new try succeeds
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery.event_id] * 2
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.redeliveries == 1


def test_a_delivery_still_being_tried_is_not_sent_twice(
    client, admin, admin_auth, loopback, receiver
):
    endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(500, {})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    services.delivery_attempt(delivery_id=str(delivery.pk))  # failed once: retried later

    response = client.post(redeliver_url(delivery), **admin_auth)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "delivery_pending"
    assert error["details"]["next_attempt_at"] is not None
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.redeliveries == 0
    assert not AuditEvent.objects.filter(action=AuditAction.WEBHOOK_DELIVERY_REDELIVERED).exists()


def test_a_disabled_endpoint_must_be_enabled_first(
    client, admin, admin_auth, loopback, receiver, settings
):
    delivery = failed_delivery(admin, receiver, settings)
    client.post(f"{BASE}{delivery.endpoint_id}/disable/", **admin_auth)

    refused = client.post(redeliver_url(delivery), **admin_auth)
    client.post(f"{BASE}{delivery.endpoint_id}/enable/", **admin_auth)
    allowed = client.post(redeliver_url(delivery), **admin_auth)

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "endpoint_disabled"
    assert allowed.status_code == 202


def test_an_unknown_or_another_endpoints_delivery_is_404(
    client, admin, admin_auth, loopback, receiver, settings
):
    delivery = failed_delivery(admin, receiver, settings)
    other = endpoint_for(admin.organisation, receiver.url + "/other")

    unknown = client.post(
        f"{BASE}{delivery.endpoint_id}/deliveries/5f0c8c4e-8a4b-4a57-9d6e-0d2a2c1d3b4a/redeliver/",
        **admin_auth,
    )
    wrong_endpoint = client.post(
        f"{BASE}{other.pk}/deliveries/{delivery.pk}/redeliver/", **admin_auth
    )

    assert unknown.status_code == wrong_endpoint.status_code == 404
    assert wrong_endpoint.json()["error"]["code"] == "delivery_not_found"


def test_members_may_not_send_deliveries_again(client, admin, loopback, receiver, settings):
    delivery = failed_delivery(admin, receiver, settings)
    plain = member(Role.MEMBER, organisation=admin.organisation, email="m@example.com")

    response = client.post(redeliver_url(delivery), **bearer(plain.user, admin.organisation))

    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED


@pytest.mark.parametrize("cache", [True, False], ids=["shared cache", "without the cache"])
def test_redeliveries_are_limited_per_organisation_per_hour(
    client, admin, admin_auth, loopback, receiver, settings, monkeypatch, cache
):
    from apps.accounts import ratelimit

    if not cache:
        monkeypatch.setattr(ratelimit, "_usage", lambda *args, **kwargs: None)
    settings.WEBHOOK_RETRY_SCHEDULE = [1]
    endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(500, {})] * 6
    deliveries = [
        services.event_publish(
            organisation=admin.organisation, event_type="job.completed", data={"n": n}
        )[0]
        for n in range(3)
    ]
    WebhookDelivery.objects.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
    settings.WEBHOOK_REDELIVERIES_PER_HOUR = 2

    answers = [client.post(redeliver_url(d), **admin_auth) for d in deliveries]

    assert [a.status_code for a in answers] == [202, 202, 429]
    error = answers[2].json()["error"]
    assert error["code"] == "webhook_redelivery_limit"
    assert 0 < error["details"]["retry_after_seconds"] <= 3600
    assert answers[2]["Retry-After"] == str(error["details"]["retry_after_seconds"])
    assert WebhookDelivery.objects.filter(redeliveries=1).count() == 2
    if not cache:  # an hour later the oldest redelivery no longer counts
        WebhookDelivery.objects.filter(pk=deliveries[0].pk).update(
            redelivered_at=timezone.now() - timedelta(minutes=61)
        )
        assert client.post(redeliver_url(deliveries[2]), **admin_auth).status_code == 202


def test_endpoint_changes_are_in_the_audit_trail_with_who_made_them(
    client, admin, admin_auth, loopback
):
    url = "https://localhost/services/T0/B0/capability-token-123"
    created = client.post(
        BASE,
        {"url": url, "event_types": ["job.completed"]},
        content_type="application/json",
        **admin_auth,
    ).json()
    endpoint_url = f"{BASE}{created['id']}/"
    for step in ("disable/", "enable/", "rotate-secret/"):
        assert client.post(endpoint_url + step, **admin_auth).status_code == 200
    assert client.delete(endpoint_url, **admin_auth).status_code == 204

    events = list(
        AuditEvent.objects.filter(action__startswith="webhook.").order_by("occurred_at", "id")
    )

    assert [e.action for e in events] == [
        AuditAction.WEBHOOK_ENDPOINT_CREATED,
        AuditAction.WEBHOOK_ENDPOINT_DISABLED,
        AuditAction.WEBHOOK_ENDPOINT_ENABLED,
        AuditAction.WEBHOOK_SECRET_ROTATED,
        AuditAction.WEBHOOK_ENDPOINT_DELETED,
    ]
    assert {e.actor for e in events} == {admin.user}
    assert {e.target_id for e in events} == {created["id"]}
    assert all(e.metadata["destination"] == "https://localhost" for e in events)
    assert {e.metadata["url_sha256"] for e in events} == {hashlib.sha256(url.encode()).hexdigest()}
    assert events[0].metadata["event_types"] == ["job.completed"]
    assert events[1].metadata["reason"] == "Disabled by an administrator."
    # Neither the secret nor the URL's token is in any event: the trail is never rewritten.
    for event in events:
        kept = f"{event.metadata} {event.target_repr}"
        assert created["secret"] not in kept and "capability-token-123" not in kept


def test_an_endpoint_disabled_by_its_failures_is_audited_as_the_system(admin, loopback, receiver):
    endpoint_for(admin.organisation, receiver.url)
    receiver.answers = [(410, {})]
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    services.delivery_attempt(delivery_id=str(delivery.pk))

    event = AuditEvent.objects.get(action=AuditAction.WEBHOOK_ENDPOINT_DISABLED)
    assert event.actor_type == AuditEvent.ActorType.SYSTEM
    assert event.metadata["reason"] == "The endpoint answered 410 Gone."


def test_the_admin_shows_deliveries_with_their_tries_and_sends_them_again(
    admin_client, loopback, receiver, settings
):
    # (admin_client's superuser is admin@example.com: the organisation's admin is someone else)
    owner = member(Role.ADMIN, email="org-admin@example.com")
    delivery = failed_delivery(owner, receiver, settings)
    settings.WEBHOOK_REDELIVERIES_PER_HOUR = 1  # the API's limit; operators are not held to it
    services.delivery_redeliver(endpoint=delivery.endpoint, delivery_id=delivery.pk)
    receiver.answers = [(500, {})]
    services.delivery_attempt(delivery_id=str(delivery.pk))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(  # its new series ran out too
        status=DeliveryStatus.FAILED, next_attempt_at=None
    )

    listing = admin_client.get("/admin/webhooks/webhookdelivery/")
    page = admin_client.get(f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/")
    endpoint_page = admin_client.get(
        f"/admin/webhooks/webhookendpoint/{delivery.endpoint_id}/change/"
    )
    action = admin_client.post(
        "/admin/webhooks/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [str(delivery.pk)]},
        follow=True,
    )

    assert listing.status_code == page.status_code == endpoint_page.status_code == 200
    assert receiver.url in listing.content.decode() and "failed" in listing.content.decode()
    assert "HTTP 500" in page.content.decode()  # the tries, inline
    assert delivery.endpoint.secret not in endpoint_page.content.decode()
    assert "Sent 1 delivery(ies) again." in action.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.redeliveries == 2
    operator_event = AuditEvent.objects.filter(
        action=AuditAction.WEBHOOK_DELIVERY_REDELIVERED
    ).latest("occurred_at")
    assert operator_event.actor.is_superuser


def test_the_admin_deletes_an_endpoint_with_its_deliveries_through_the_service(
    admin_client, loopback, receiver, settings
):
    owner = member(Role.ADMIN, email="org-admin@example.com")
    delivery = failed_delivery(owner, receiver, settings)
    endpoint = services.endpoint_rotate_secret(endpoint=delivery.endpoint, actor=owner.user)
    url = f"/admin/webhooks/webhookendpoint/{endpoint.pk}/delete/"

    confirm = admin_client.get(url)
    page = admin_client.get(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/")
    deleted = admin_client.post(url, {"post": "yes"}, follow=True)

    assert confirm.status_code == 200
    assert "Webhook deliveries: 1" in confirm.content.decode()  # counted, not listed
    for secret in (endpoint.secret, endpoint.previous_secret):
        assert secret not in page.content.decode() + confirm.content.decode()
    assert deleted.status_code == 200
    assert not WebhookDelivery.objects.filter(pk=delivery.pk).exists()
    event = AuditEvent.objects.get(action=AuditAction.WEBHOOK_ENDPOINT_DELETED)
    assert event.actor.is_superuser
