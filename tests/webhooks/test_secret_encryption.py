"""Signing secrets encrypted at rest: API, real deliveries, unreadable secrets, the migration."""

from __future__ import annotations

import importlib
import logging

import pytest
from cryptography.fernet import Fernet
from django.apps import apps as django_apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.core import crypto
from apps.webhooks import services
from apps.webhooks.models import DeliveryStatus, WebhookEndpoint
from tests.factories import OrganisationFactory

TABLE = "webhooks_webhookendpoint"
MIGRATION = importlib.import_module("apps.webhooks.migrations.0002_encrypt_secrets")
OTHER_KEY = Fernet.generate_key().decode()


def stored(endpoint_id, column: str = "secret") -> str:
    """What the column holds, read with SQL (no field conversion)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {TABLE} WHERE id = %s", [endpoint_id])
        return cursor.fetchone()[0]


def store_raw(endpoint_id, value: str, column: str = "secret") -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET {column} = %s WHERE id = %s", [value, endpoint_id])


def endpoint_row(organisation) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        organisation=organisation,
        url="https://hooks.customer.test/x",
        event_types=["job.completed"],
        secret="whsec_c2VjcmV0",
    )


def register(client, auth, url: str) -> dict:
    response = client.post(
        "/api/v1/webhooks/endpoints/",
        {"url": url, "event_types": ["job.completed"]},
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 201, response.content
    return response.json()


# ---- API and real deliveries --------------------------------------------------------------------
def test_the_secret_shown_once_is_stored_encrypted_and_signs_a_real_delivery(
    client, admin, admin_auth, loopback, receiver, documented_verify
):
    created = register(client, admin_auth, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={"job_id": "j1"}
    )[0]

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    raw = stored(created["id"])
    assert created["secret"].startswith("whsec_")
    assert raw.startswith("fernet:v1:") and created["secret"] not in raw
    assert status == DeliveryStatus.SUCCEEDED
    request = receiver.requests[0]
    assert documented_verify(created["secret"], request.headers, request.body) is True


def test_a_rotated_secret_and_its_predecessor_are_both_encrypted_and_both_sign(
    client, admin, admin_auth, loopback, receiver, documented_verify
):
    created = register(client, admin_auth, receiver.url)
    base = f"/api/v1/webhooks/endpoints/{created['id']}"

    rotated = client.post(f"{base}/rotate-secret/", **admin_auth).json()
    client.post(f"{base}/test/", **admin_auth)
    delivery = WebhookEndpoint.objects.get(pk=created["id"]).deliveries.get()
    services.delivery_attempt(delivery_id=str(delivery.pk))

    for column, secret in (("secret", rotated["secret"]), ("previous_secret", created["secret"])):
        raw = stored(created["id"], column)
        assert raw.startswith("fernet:v1:") and secret not in raw
    request = receiver.requests[0]
    assert documented_verify(rotated["secret"], request.headers, request.body)
    assert documented_verify(created["secret"], request.headers, request.body)


# ---- A secret no configured key decrypts --------------------------------------------------------
def test_an_undecryptable_secret_fails_the_try_with_a_clear_logged_error_and_no_request(
    admin, loopback, receiver, settings, caplog
):
    endpoint = services.endpoint_create(
        organisation=admin.organisation, user=None, url=receiver.url, event_types=["job.completed"]
    )
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    settings.FIELD_ENCRYPTION_KEYS = [OTHER_KEY]  # the key that encrypted it is gone

    with caplog.at_level(logging.ERROR, logger="apps.webhooks.services"):
        status = services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    endpoint.refresh_from_db()
    assert status == DeliveryStatus.PENDING  # retried on the schedule: the key may come back
    assert receiver.requests == []
    assert delivery.attempts == 1 and delivery.next_attempt_at is not None
    assert delivery.last_error == services.UNDECRYPTABLE_ERROR
    assert [a.error for a in delivery.log.all()] == [services.UNDECRYPTABLE_ERROR]
    assert endpoint.consecutive_failures == 0 and endpoint.is_active  # not the receiver's fault
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "cannot be decrypted" in record.getMessage()
    assert str(endpoint.pk) in record.getMessage() and str(delivery.pk) in record.getMessage()
    assert "fernet:v1:" not in caplog.text


def test_the_last_try_with_an_undecryptable_secret_fails_the_delivery(
    admin, loopback, receiver, settings
):
    settings.WEBHOOK_RETRY_SCHEDULE = [1]
    services.endpoint_create(
        organisation=admin.organisation, user=None, url=receiver.url, event_types=["job.completed"]
    )
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]
    settings.FIELD_ENCRYPTION_KEYS = [OTHER_KEY]

    for _ in range(2):
        type(delivery).objects.filter(pk=delivery.pk).update(next_attempt_at=delivery.created_at)
        services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error == services.UNDECRYPTABLE_ERROR
    assert receiver.requests == []


def test_the_api_reads_an_endpoint_with_an_undecryptable_secret_without_error_or_leak(
    client, admin, admin_auth, loopback, receiver, settings
):
    created = register(client, admin_auth, receiver.url)
    token = stored(created["id"])
    settings.FIELD_ENCRYPTION_KEYS = [OTHER_KEY]
    base = f"/api/v1/webhooks/endpoints/{created['id']}"

    shown = client.get(f"{base}/", **admin_auth)
    listed = client.get("/api/v1/webhooks/endpoints/", **admin_auth)
    disabled = client.post(f"{base}/disable/", **admin_auth)
    enabled = client.post(f"{base}/enable/", **admin_auth)

    for response in (shown, listed, disabled, enabled):
        assert response.status_code == 200, response.content
        body = response.content.decode()
        assert "secret" not in body and "fernet" not in body and "undecryptable" not in body
    assert stored(created["id"]) == token  # saved back unchanged: restoring the key recovers it


def test_rotating_an_undecryptable_secret_recovers_the_endpoint(
    client, admin, admin_auth, loopback, receiver, settings, documented_verify
):
    created = register(client, admin_auth, receiver.url)
    settings.FIELD_ENCRYPTION_KEYS = [OTHER_KEY]
    base = f"/api/v1/webhooks/endpoints/{created['id']}"

    rotated = client.post(f"{base}/rotate-secret/", **admin_auth)
    client.post(f"{base}/test/", **admin_auth)
    delivery = WebhookEndpoint.objects.get(pk=created["id"]).deliveries.get()
    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_")
    assert status == DeliveryStatus.SUCCEEDED
    request = receiver.requests[0]
    # The unreadable previous secret is left out; the new one signs alone.
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert documented_verify(rotated.json()["secret"], request.headers, request.body)


# ---- The data migration -------------------------------------------------------------------------
def test_the_migration_function_encrypts_plaintext_and_leaves_ciphertext_alone(admin):
    encrypted = endpoint_row(admin.organisation)
    legacy = endpoint_row(admin.organisation)
    token = stored(encrypted.pk)
    store_raw(legacy.pk, "whsec_bGVnYWN5")
    store_raw(legacy.pk, "whsec_cHJldmlvdXM=", column="previous_secret")

    with connection.schema_editor() as editor:
        MIGRATION.encrypt_plaintext(django_apps, editor)
    first = stored(legacy.pk), stored(legacy.pk, "previous_secret")
    with connection.schema_editor() as editor:
        MIGRATION.encrypt_plaintext(django_apps, editor)

    assert stored(encrypted.pk) == token
    assert crypto.decrypt(first[0]) == "whsec_bGVnYWN5"
    assert crypto.decrypt(first[1]) == "whsec_cHJldmlvdXM="
    assert (stored(legacy.pk), stored(legacy.pk, "previous_secret")) == first  # idempotent
    assert stored(encrypted.pk, "previous_secret") == ""


def test_the_reverse_migration_stops_without_changes_when_a_secret_cannot_be_decrypted(
    admin, settings
):
    readable = endpoint_row(admin.organisation)
    settings.FIELD_ENCRYPTION_KEYS = [OTHER_KEY, *settings.FIELD_ENCRYPTION_KEYS]
    unreadable = endpoint_row(admin.organisation)
    settings.FIELD_ENCRYPTION_KEYS = settings.FIELD_ENCRYPTION_KEYS[1:]
    before = stored(readable.pk)

    with (
        pytest.raises(RuntimeError, match=f"webhook endpoint {unreadable.pk}"),
        connection.schema_editor() as editor,
    ):
        MIGRATION.decrypt_to_plaintext(django_apps, editor)

    assert stored(readable.pk) == before


@pytest.mark.django_db(transaction=True)
def test_migrating_a_legacy_plaintext_row_forward_and_back():
    organisation = OrganisationFactory()
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("webhooks")
    executor.migrate([("webhooks", "0001_initial")])
    try:
        old_state = executor.loader.project_state([("webhooks", "0001_initial")])
        OldEndpoint = old_state.apps.get_model("webhooks", "WebhookEndpoint")
        legacy = OldEndpoint.objects.create(
            organisation_id=organisation.pk,
            url="https://hooks.customer.test/x",
            event_types=["job.completed"],
            secret="whsec_bGVnYWN5LXBsYWludGV4dA==",
        )

        executor = MigrationExecutor(connection)
        executor.migrate([("webhooks", "0002_encrypt_secrets")])
        forward = stored(legacy.pk)
        read = WebhookEndpoint.objects.get(pk=legacy.pk).secret
        executor = MigrationExecutor(connection)
        executor.migrate([("webhooks", "0001_initial")])
        backward = stored(legacy.pk)
    finally:
        MigrationExecutor(connection).migrate(latest)

    assert forward.startswith("fernet:v1:") and "bGVnYWN5" not in forward
    assert read == "whsec_bGVnYWN5LXBsYWludGV4dA=="
    assert backward == "whsec_bGVnYWN5LXBsYWludGV4dA=="
