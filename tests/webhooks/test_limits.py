"""Every event fans out to every endpoint and each test send is a delivery on the shared webhooks
queue: endpoints per organisation and test sends per endpoint are capped."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from apps.accounts.models import Role
from apps.webhooks import services
from apps.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.factories import OrganisationFactory, bearer, member

BASE = "/api/v1/webhooks/endpoints/"


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = True  # stands in for any public receiver


def create(client, auth, n=0):
    return client.post(
        BASE,
        {"url": f"https://localhost/hook{n}", "event_types": ["job.completed"]},
        content_type="application/json",
        **auth,
    )


def test_an_organisation_has_at_most_webhook_endpoints_per_organisation_max(
    client, admin, admin_auth, settings
):
    settings.WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX = 3
    created = [create(client, admin_auth, n) for n in range(3)]
    client.post(f"{BASE}{created[0].json()['id']}/disable/", **admin_auth)
    refused = create(client, admin_auth, 3)
    client.delete(f"{BASE}{created[1].json()['id']}/", **admin_auth)
    after_deleting = create(client, admin_auth, 4)

    assert [c.status_code for c in created] == [201, 201, 201]
    # A disabled endpoint counts: it can be enabled again without a check.
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "webhook_endpoint_limit"
    assert error["details"] == {"limit": 3}
    assert after_deleting.status_code == 201
    assert WebhookEndpoint.objects.filter(organisation=admin.organisation).count() == 3


def test_the_endpoint_cap_is_per_organisation(client, admin, admin_auth, settings):
    settings.WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX = 1
    services.endpoint_create(
        organisation=OrganisationFactory(),
        user=None,
        url="https://localhost/elsewhere",
        event_types=["job.completed"],
    )

    assert create(client, admin_auth).status_code == 201
    assert create(client, admin_auth, 1).status_code == 409


def test_no_endpoint_cap_when_zero(client, admin_auth, settings):
    settings.WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX = 0

    assert {create(client, admin_auth, n).status_code for n in range(25)} == {201}


def test_test_sends_are_limited_per_organisation_per_hour(client, admin, admin_auth, settings):
    settings.WEBHOOK_TEST_SENDS_PER_HOUR = 3
    first = create(client, admin_auth).json()["id"]
    second = create(client, admin_auth, 1).json()["id"]

    answers = [client.post(f"{BASE}{first}/test/", **admin_auth) for _ in range(2)]
    answers += [client.post(f"{BASE}{second}/test/", **admin_auth) for _ in range(2)]

    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    error = answers[3].json()["error"]
    assert error["code"] == "webhook_test_limit"
    assert error["details"]["limit"] == 3
    assert 0 < error["details"]["retry_after_seconds"] <= 3600
    assert answers[3]["Retry-After"] == str(error["details"]["retry_after_seconds"])
    assert WebhookDelivery.objects.filter(event_type="webhook.test").count() == 3
    # Another organisation has its own allowance.
    other = member(Role.ADMIN, email="other-admin@example.com")
    other_auth = bearer(other.user, other.organisation)
    theirs = create(client, other_auth).json()["id"]
    assert client.post(f"{BASE}{theirs}/test/", **other_auth).status_code == 202


def test_deleting_and_creating_endpoints_does_not_reset_the_limit(
    client, admin, admin_auth, settings
):
    settings.WEBHOOK_TEST_SENDS_PER_HOUR = 3
    codes = []
    for n in range(3):
        endpoint = create(client, admin_auth, n).json()["id"]
        codes += [
            client.post(f"{BASE}{endpoint}/test/", **admin_auth).status_code for _ in range(2)
        ]
        assert client.delete(f"{BASE}{endpoint}/", **admin_auth).status_code == 204

    assert codes == [202, 202, 202, 429, 429, 429]


def test_without_the_cache_the_endpoints_own_tests_of_the_hour_count(
    client, admin, admin_auth, settings, monkeypatch
):
    from apps.accounts import ratelimit

    monkeypatch.setattr(ratelimit, "_usage", lambda *args, **kwargs: None)
    settings.WEBHOOK_TEST_SENDS_PER_HOUR = 2
    endpoint = create(client, admin_auth).json()["id"]
    for _ in range(2):
        client.post(f"{BASE}{endpoint}/test/", **admin_auth)
    oldest = WebhookDelivery.objects.filter(endpoint_id=endpoint).order_by("created_at").first()
    WebhookDelivery.objects.filter(pk=oldest.pk).update(
        created_at=timezone.now() - timedelta(minutes=61)
    )
    # Events are not test sends: they never count against the limit.
    services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={"job": "x"}
    )

    allowed = client.post(f"{BASE}{endpoint}/test/", **admin_auth)
    refused = client.post(f"{BASE}{endpoint}/test/", **admin_auth)

    assert allowed.status_code == 202
    assert refused.status_code == 429
    assert WebhookDelivery.objects.filter(endpoint_id=endpoint).count() == 4


def test_no_test_send_limit_when_zero(client, admin_auth, settings):
    settings.WEBHOOK_TEST_SENDS_PER_HOUR = 0
    endpoint = create(client, admin_auth).json()["id"]

    codes = {client.post(f"{BASE}{endpoint}/test/", **admin_auth).status_code for _ in range(15)}

    assert codes == {202}


@pytest.mark.django_db(transaction=True)
def test_creates_at_once_cannot_both_take_the_last_place(settings):
    """The count is read under the organisation's row lock: the second create waits for the
    first to commit, then sees its endpoint."""
    settings.WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX = 1
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    organisation = OrganisationFactory()
    real_create = WebhookEndpoint.objects.create

    def slow_create(**kwargs):
        time.sleep(0.5)  # both requests have counted by now, unless the lock serialises them
        return real_create(**kwargs)

    errors: list[BaseException] = []

    def attempt(n):
        try:
            services.endpoint_create(
                organisation=organisation,
                user=None,
                url=f"https://localhost/race{n}",
                event_types=["job.completed"],
            )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    with mock.patch.object(WebhookEndpoint.objects, "create", slow_create):
        threads = [threading.Thread(target=attempt, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert not any(thread.is_alive() for thread in threads)
    assert [getattr(e, "code", None) for e in errors] == ["webhook_endpoint_limit"]
    assert WebhookEndpoint.objects.filter(organisation=organisation).count() == 1
