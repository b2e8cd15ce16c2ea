"""A delivery whose endpoint is deleted while it is being sent ends quietly; the email to admins
about a disabled endpoint goes through the outbox, so a broker blip does not lose it."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from apps.accounts.models import Role
from apps.core.models import DeadLetter
from apps.notifications.models import EmailOutbox, EmailStatus
from apps.webhooks import network, services
from apps.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from lexiscore.celery import app
from tests.factories import member
from workers import webhooks as webhook_tasks
from workers.emails import send_due_emails


def published_delivery(organisation, url) -> WebhookDelivery:
    services.endpoint_create(
        organisation=organisation, user=None, url=url, event_types=["job.completed"]
    )
    return services.event_publish(
        organisation=organisation, event_type="job.completed", data={"job_id": "j1"}
    )[0]


def test_an_endpoint_deleted_during_the_request_ends_the_try_quietly(admin, loopback, receiver):
    delivery = published_delivery(admin.organisation, receiver.url)
    real_post = network.post

    def post_while_the_user_deletes(url, **kwargs):
        response = real_post(url, **kwargs)
        services.endpoint_delete(endpoint=WebhookEndpoint.objects.get())
        return response

    with mock.patch.object(network, "post", post_while_the_user_deletes):
        result = webhook_tasks.deliver.apply(args=[str(delivery.pk)])

    assert result.successful() and result.get() == "deleted"
    assert len(receiver.requests) == 1
    assert DeadLetter.objects.count() == 0
    assert WebhookDelivery.objects.count() == WebhookAttempt.objects.count() == 0


def test_an_endpoint_deleted_right_after_the_claim_ends_the_try_quietly(admin, loopback, receiver):
    delivery = published_delivery(admin.organisation, receiver.url)
    real_claim = services._claim

    def claim_then_the_user_deletes(delivery_id, now, due_at=None):
        claimed = real_claim(delivery_id, now, due_at)
        services.endpoint_delete(endpoint=WebhookEndpoint.objects.get())
        return claimed

    with mock.patch.object(services, "_claim", claim_then_the_user_deletes):
        result = webhook_tasks.deliver.apply(args=[str(delivery.pk)])

    assert result.successful() and result.get() == "deleted"
    assert receiver.requests == []
    assert DeadLetter.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_disabled_endpoint_email_survives_a_broker_blip(
    loopback, receiver, settings, mailoutbox
):
    admin = member(Role.ADMIN, email="admin@example.com")
    member(Role.MEMBER, organisation=admin.organisation, email="plain@example.com")
    settings.WEBHOOK_DISABLE_AFTER_FAILURES = 1
    settings.WEBHOOK_DISABLE_AFTER_SECONDS = 0
    receiver.answers = [(500, {})]
    delivery = published_delivery(admin.organisation, receiver.url)
    down = KombuOperationalError("connection refused")

    with mock.patch("workers.emails.send_email.apply_async", side_effect=down):
        status = services.delivery_attempt(delivery_id=str(delivery.pk))

    assert status == "pending"  # the try is recorded; the commit hook's failure raised nothing
    assert WebhookEndpoint.objects.get().is_active is False
    email = EmailOutbox.objects.get()
    assert (email.template, email.recipients) == ("webhook_disabled", ["admin@example.com"])
    assert email.status == EmailStatus.PENDING
    EmailOutbox.objects.update(next_try_at=timezone.now() - timedelta(seconds=1))

    app.conf.task_always_eager = True  # the broker is back; tasks run in-process
    try:
        published = send_due_emails()
    finally:
        app.conf.task_always_eager = False

    assert published == 1
    assert [m.to for m in mailoutbox] == [["admin@example.com"]]
    assert receiver.url in mailoutbox[0].body
    assert EmailOutbox.objects.get().status == EmailStatus.SENT


def test_a_refused_publish_in_the_due_sweep_stops_none_of_the_others(admin, monkeypatch):
    org = admin.organisation
    for url in ("https://hooks.customer.test/a", "https://hooks.customer.test/b"):
        WebhookEndpoint.objects.create(
            organisation=org, url=url, event_types=["job.completed"], secret="whsec_AAAA"
        )
    services.event_publish(organisation=org, event_type="job.completed", data={})
    outcomes = [KombuOperationalError("connection reset"), None]
    published = []

    def apply_async(args=None, **options):
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        published.append(args[0])

    monkeypatch.setattr(webhook_tasks.deliver, "apply_async", apply_async)

    count = webhook_tasks.send_due_deliveries()

    assert count == 1
    assert len(published) == 1 and outcomes == []
    assert WebhookDelivery.objects.filter(status="pending").count() == 2  # the next sweep
