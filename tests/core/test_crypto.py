"""Encryption at rest (apps/core/crypto.py): primitives, the model field, key rotation."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from django.core import serializers
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from apps.core import crypto
from apps.webhooks.models import WebhookEndpoint
from tests.factories import OrganisationFactory

SECRET = "whsec_bXktc2lnbmluZy1zZWNyZXQtZm9yLXRlc3RzLTAxMjM0NTY3"
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


def stored(endpoint: WebhookEndpoint, column: str = "secret") -> str:
    """What the database column holds, read with SQL (no field conversion)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {column} FROM webhooks_webhookendpoint WHERE id = %s", [endpoint.pk]
        )
        return cursor.fetchone()[0]


def store_raw(endpoint: WebhookEndpoint, value: str, column: str = "secret") -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE webhooks_webhookendpoint SET {column} = %s WHERE id = %s", [value, endpoint.pk]
        )


def new_endpoint(secret: str = SECRET, **fields) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        organisation=OrganisationFactory(),
        url="https://hooks.customer.test/x",
        event_types=["job.completed"],
        secret=secret,
        **fields,
    )


# ---- Primitives ---------------------------------------------------------------------------------
def test_a_value_round_trips_and_carries_the_prefix():
    token = crypto.encrypt(SECRET)

    assert token.startswith("fernet:v1:")
    assert SECRET not in token
    assert crypto.decrypt(token) == SECRET


def test_encryption_is_randomised():
    assert crypto.encrypt(SECRET) != crypto.encrypt(SECRET)


def test_plaintext_is_told_apart_from_ciphertext():
    assert crypto.is_encrypted(crypto.encrypt(SECRET))
    assert not crypto.is_encrypted(SECRET)
    assert not crypto.is_encrypted("")
    assert not crypto.is_encrypted(None)
    with pytest.raises(ValueError, match="Not an encrypted value"):
        crypto.decrypt(SECRET)


def test_a_value_under_an_unknown_key_raises_decryption_error(settings):
    token = crypto.encrypt(SECRET)
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]

    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token)


@pytest.mark.parametrize("keys", [[], ["not-a-fernet-key"], [NEW_KEY, "short"]])
def test_missing_or_malformed_keys_are_a_configuration_error_that_shows_no_key(settings, keys):
    settings.FIELD_ENCRYPTION_KEYS = keys

    with pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEYS") as raised:
        crypto.encrypt(SECRET)

    assert all(key not in str(raised.value) for key in keys)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 50, 99, 100])
def test_ciphertext_length_is_exact(length):
    assert len(crypto.encrypt("x" * length)) == crypto.ciphertext_length(length)


def test_the_webhook_secret_column_fits_the_longest_secret_it_accepts_before_encryption():
    # The plaintext limit was 100 characters before encryption.
    assert crypto.ciphertext_length(100) <= WebhookEndpoint._meta.get_field("secret").max_length


# ---- Model field --------------------------------------------------------------------------------
def test_the_column_holds_no_plaintext_and_the_attribute_the_plaintext(db):
    endpoint = new_endpoint()

    raw = stored(endpoint)

    assert raw.startswith("fernet:v1:")
    assert SECRET not in raw
    assert SECRET.removeprefix("whsec_") not in raw
    assert crypto.decrypt(raw) == SECRET
    assert endpoint.secret == SECRET
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).secret == SECRET


def test_an_empty_previous_secret_stays_empty(db):
    endpoint = new_endpoint()

    assert stored(endpoint, "previous_secret") == ""
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).previous_secret == ""


@pytest.mark.parametrize("write", ["save", "update", "bulk_update"])
def test_every_write_path_encrypts(db, write):
    endpoint = new_endpoint()
    changed = "whsec_Y2hhbmdlZC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg=="

    if write == "save":
        endpoint.previous_secret = changed
        endpoint.save()
    elif write == "update":
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(previous_secret=changed)
    else:
        endpoint.previous_secret = changed
        WebhookEndpoint.objects.bulk_update([endpoint], ["previous_secret"])

    raw = stored(endpoint, "previous_secret")
    assert raw.startswith("fernet:v1:") and changed not in raw
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).previous_secret == changed


def test_bulk_create_encrypts(db):
    organisation = OrganisationFactory()

    [endpoint] = WebhookEndpoint.objects.bulk_create(
        [
            WebhookEndpoint(
                organisation=organisation,
                url="https://hooks.customer.test/x",
                event_types=["job.completed"],
                secret=SECRET,
            )
        ]
    )

    assert crypto.decrypt(stored(endpoint)) == SECRET


def test_a_token_assigned_to_the_attribute_is_not_encrypted_twice(db):
    endpoint = new_endpoint()
    endpoint.secret = stored(endpoint)

    endpoint.save()

    assert crypto.decrypt(stored(endpoint)) == SECRET


def test_lookups_on_an_encrypted_field_are_refused(db):
    with pytest.raises(FieldError):
        list(WebhookEndpoint.objects.filter(secret=SECRET))

    assert list(WebhookEndpoint.objects.filter(secret__isnull=True)) == []


def test_a_legacy_plaintext_value_is_read_as_it_is_and_encrypted_on_the_next_save(db):
    endpoint = new_endpoint()
    store_raw(endpoint, SECRET)

    endpoint = WebhookEndpoint.objects.get(pk=endpoint.pk)
    assert endpoint.secret == SECRET
    endpoint.save()

    assert crypto.decrypt(stored(endpoint)) == SECRET


def test_serialized_data_holds_ciphertext_and_loads_back(db):
    endpoint = new_endpoint()

    dumped = serializers.serialize("json", [endpoint])
    [loaded] = list(serializers.deserialize("json", dumped))

    assert SECRET not in dumped
    assert json.loads(dumped)[0]["fields"]["secret"].startswith("fernet:v1:")
    assert loaded.object.secret == SECRET


def test_an_undecryptable_value_is_read_without_error_and_written_back_unchanged(db, settings):
    endpoint = new_endpoint()
    token = stored(endpoint)
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]

    endpoint = WebhookEndpoint.objects.get(pk=endpoint.pk)
    endpoint.description = "changed"
    endpoint.save()

    assert isinstance(endpoint.secret, crypto.Undecryptable)
    assert str(endpoint.secret) == "<undecryptable>"
    assert token not in repr(endpoint.secret)
    with pytest.raises(crypto.DecryptionError):
        crypto.plaintext(endpoint.secret)
    assert stored(endpoint) == token
    assert endpoint._meta.get_field("secret").clean(endpoint.secret, endpoint) == endpoint.secret


# ---- Rotation -----------------------------------------------------------------------------------
def test_rotation_re_encrypts_under_the_new_key_so_the_old_one_can_be_dropped(db, settings):
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    rotated = new_endpoint(previous_secret="whsec_cHJldmlvdXMtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=")
    legacy = new_endpoint()
    store_raw(legacy, SECRET)
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    current = new_endpoint()
    current_token = stored(current)
    assert WebhookEndpoint.objects.get(pk=rotated.pk).secret == SECRET  # old data still reads

    call_command("rotate_field_encryption")

    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]
    for endpoint in (rotated, legacy, current):
        reloaded = WebhookEndpoint.objects.get(pk=endpoint.pk)
        assert reloaded.secret == SECRET
        Fernet(NEW_KEY).decrypt(stored(endpoint).removeprefix("fernet:v1:").encode())
    assert WebhookEndpoint.objects.get(pk=rotated.pk).previous_secret == (
        "whsec_cHJldmlvdXMtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY="
    )
    assert stored(current) == current_token  # already current: not rewritten


def test_rotation_reads_every_row_across_batches(db):
    endpoints = {new_endpoint().pk for _ in range(5)}
    field = WebhookEndpoint._meta.get_field("secret")

    rows = list(crypto._stored_values(WebhookEndpoint, field, batch=2))

    assert {pk for pk, _ in rows} == endpoints
    assert len(rows) == 5


def test_a_dry_run_counts_and_writes_nothing(db, settings, capsys):
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    endpoint = new_endpoint()
    before = stored(endpoint)
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    new_endpoint()

    call_command("rotate_field_encryption", "--dry-run")

    output = capsys.readouterr().out
    assert "webhooks.WebhookEndpoint.secret: 1 current, would re-encrypt 1," in output
    assert "1 value(s) would be re-encrypted (dry run: nothing written)" in output
    assert stored(endpoint) == before


def test_rotation_stops_with_an_error_when_a_value_cannot_be_decrypted(db, settings, caplog):
    endpoint = new_endpoint()
    token = stored(endpoint)
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]

    with pytest.raises(CommandError, match="1 value\\(s\\) cannot be decrypted"):
        call_command("rotate_field_encryption")

    assert stored(endpoint) == token
    assert str(endpoint.pk) in caplog.text
    assert token not in caplog.text and SECRET not in caplog.text


def test_rotation_leaves_a_value_the_application_changed_meanwhile(db, settings, monkeypatch):
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    endpoint = new_endpoint()
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    real_reencrypt = crypto.reencrypt

    def rotated_by_the_application_meanwhile(value):
        result = real_reencrypt(value)
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(secret="whsec_bmV3")
        return result

    monkeypatch.setattr(crypto, "reencrypt", rotated_by_the_application_meanwhile)

    counts = crypto.reencrypt_all()

    [secret_count] = [c for c in counts if c.label == "webhooks.WebhookEndpoint.secret"]
    assert secret_count.changed_meanwhile == 1
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).secret == "whsec_bmV3"
