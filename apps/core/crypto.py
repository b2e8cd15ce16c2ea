"""Encryption at rest of values the application must read back (webhook signing secrets).

Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) under the keys of
`settings.FIELD_ENCRYPTION_KEYS`: the first key encrypts, every key decrypts (MultiFernet), so a
new key is put first, `manage.py rotate_field_encryption` re-encrypts, and the old key is then
removed. A stored value is `fernet:v1:<token>`; anything without that prefix is legacy plaintext
(written before encryption, or by a process of the previous release during an upgrade), read as
it is and encrypted on the next write or rotation.

`EncryptedCharField` does this transparently on every write path (`save()`, `QuerySet.update()`,
`bulk_create()`, `bulk_update()`) and on every read. A stored value that no configured key
decrypts is read as an `Undecryptable` (never an exception, never the ciphertext as if it were
the secret); code that needs the plaintext calls `plaintext()`, which raises `DecryptionError`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, models

logger = logging.getLogger(__name__)

PREFIX = "fernet:v1:"
GENERATE_KEY_COMMAND = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class DecryptionError(Exception):
    """No configured key decrypts the stored value (a key was removed too early, or lost)."""


@functools.lru_cache(maxsize=8)
def _fernets(keys: tuple[str, ...]) -> tuple[Fernet, MultiFernet]:
    if not keys:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS is empty: set one or more Fernet keys, comma-separated "
            f"(generate one with {GENERATE_KEY_COMMAND})."
        )
    try:
        fernets = [Fernet(key) for key in keys]
    except ValueError:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe "
            f"base64-encoded bytes; generate one with {GENERATE_KEY_COMMAND})."
        ) from None
    return fernets[0], MultiFernet(fernets)


def _configured() -> tuple[Fernet, MultiFernet]:
    """(the current key, all keys) from the settings; cached per distinct list of keys."""
    return _fernets(tuple(settings.FIELD_ENCRYPTION_KEYS))


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def encrypt(plaintext: str) -> str:
    """Encrypt under the current (first) key; the result carries the `fernet:v1:` prefix."""
    _, all_keys = _configured()
    return PREFIX + all_keys.encrypt(plaintext.encode()).decode()


def decrypt(value: str) -> str:
    """Decrypt a `fernet:v1:` value with any configured key; `DecryptionError` if none can."""
    if not is_encrypted(value):
        raise ValueError("Not an encrypted value (no fernet:v1: prefix).")
    _, all_keys = _configured()
    try:
        return all_keys.decrypt(value.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise DecryptionError("No key in FIELD_ENCRYPTION_KEYS decrypts this value.") from None


def reencrypt(value: str) -> str | None:
    """The value under the current key, or None if it already is; `DecryptionError` if unreadable.

    A value under an older key is rotated in place (MultiFernet.rotate keeps the token's original
    timestamp); legacy plaintext is encrypted.
    """
    if not is_encrypted(value):
        return encrypt(value)
    current, all_keys = _configured()
    token = value.removeprefix(PREFIX).encode()
    try:
        current.decrypt(token)
        return None
    except InvalidToken:
        pass
    try:
        return PREFIX + all_keys.rotate(token).decode()
    except InvalidToken:
        raise DecryptionError("No key in FIELD_ENCRYPTION_KEYS decrypts this value.") from None


@dataclass(frozen=True)
class Undecryptable:
    """A stored value that no configured key decrypts.

    Kept as read, so saving the row writes the same ciphertext back (restoring the missing key
    makes it readable again); it never prints, serializes or signs as a secret.
    """

    token: str

    def __str__(self) -> str:
        return "<undecryptable>"

    def __repr__(self) -> str:
        return "Undecryptable(<hidden>)"


def plaintext(value: object) -> str:
    """The plaintext of an `EncryptedCharField` attribute; `DecryptionError` if it is unreadable."""
    if isinstance(value, Undecryptable):
        raise DecryptionError("No key in FIELD_ENCRYPTION_KEYS decrypts this value.")
    if not isinstance(value, str):
        raise TypeError(f"Expected a string, got {type(value).__name__}.")
    return value


# ---- Model field --------------------------------------------------------------------------------
class EncryptedCharField(models.CharField):
    """A CharField whose column holds `fernet:v1:<token>`; the attribute holds the plaintext.

    `max_length` is the column's: it must fit the token (`ciphertext_length()`). Empty strings and
    NULL are stored as they are. Lookups other than `isnull` are refused: encryption is randomised,
    so `filter(secret=...)` could never match and would fail silently.
    """

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return self.to_python(value)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, Undecryptable):
            return value
        value = super().to_python(value)
        if not is_encrypted(value):
            return value
        try:
            return decrypt(value)
        except DecryptionError:
            return Undecryptable(value)

    def get_prep_value(self, value: Any) -> Any:
        # CharField prepares through to_python: a token assigned to the attribute is decrypted
        # here and encrypted afresh below (never twice), an unreadable one is written back as is.
        value = super().get_prep_value(value)
        if isinstance(value, Undecryptable):
            return value.token
        if value is None or value == "":
            return value
        return encrypt(value)

    def run_validators(self, value: Any) -> None:
        if not isinstance(value, Undecryptable):  # nothing to validate: it is kept as it is
            super().run_validators(value)

    def value_to_string(self, obj: models.Model) -> str:
        # dumpdata writes ciphertext (loaddata decrypts it through to_python), never plaintext.
        return self.get_prep_value(self.value_from_object(obj))

    def get_lookup(self, lookup_name: str) -> Any:
        return super().get_lookup(lookup_name) if lookup_name == "isnull" else None


def ciphertext_length(plaintext_length: int) -> int:
    """Characters stored for a plaintext of `plaintext_length` bytes (prefix included)."""
    padded = (plaintext_length // 16 + 1) * 16  # PKCS7 always adds at least one byte
    token_bytes = 1 + 8 + 16 + padded + 32  # version, timestamp, IV, ciphertext, HMAC
    return len(PREFIX) + 4 * -(-token_bytes // 3)  # url-safe base64 with padding


# ---- Rotation -----------------------------------------------------------------------------------
@dataclass
class RotationCount:
    """What a rotation found (or, in a dry run, would do) in one encrypted column."""

    label: str  # "app_label.Model.field"
    current: int = 0  # already under the first key
    rotated: int = 0  # under an older key: re-encrypted under the first
    encrypted_plaintext: int = 0  # legacy plaintext: encrypted
    undecryptable: int = 0  # no configured key decrypts it: left as it is
    changed_meanwhile: int = 0  # rewritten by the application during the run: left as written


def encrypted_fields() -> Iterator[tuple[type[models.Model], EncryptedCharField]]:
    from django.apps import apps

    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedCharField):
                yield model, field


def _sql_names(model: type[models.Model], field: EncryptedCharField) -> tuple[str, str, str]:
    """The quoted table, primary-key column and field column."""
    q = connection.ops.quote_name
    pk = model._meta.pk
    assert pk is not None and pk.column and field.column
    return q(model._meta.db_table), q(pk.column), q(field.column)


def _stored_values(model: type[models.Model], field: EncryptedCharField, batch: int = 500):
    """(pk, stored value) of every non-empty value, read raw (no decryption), in pk order."""
    table, pk, column = _sql_names(model, field)
    # Identifiers come from the model's metadata (quoted), values are parameters.
    where = f"{column} IS NOT NULL AND {column} <> ''"
    select = f"SELECT {pk}, {column} FROM {table} WHERE {where}"  # noqa: S608
    last = None
    while True:
        with connection.cursor() as cursor:
            if last is None:
                cursor.execute(f"{select} ORDER BY {pk} LIMIT %s", [batch])
            else:
                cursor.execute(f"{select} AND {pk} > %s ORDER BY {pk} LIMIT %s", [last, batch])
            rows = cursor.fetchall()
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1][0]


def _replace(model: type[models.Model], field: EncryptedCharField, pk, old: str, new: str) -> bool:
    """Write `new` only where the row still holds `old` (the application may have rotated it)."""
    table, pk_column, column = _sql_names(model, field)
    with connection.cursor() as cursor:
        sql = f"UPDATE {table} SET {column} = %s WHERE {pk_column} = %s AND {column} = %s"  # noqa: S608
        cursor.execute(sql, [new, pk, old])
        return cursor.rowcount == 1


def reencrypt_all(*, dry_run: bool = False) -> list[RotationCount]:
    """Bring every `EncryptedCharField` value under the current key (and encrypt legacy plaintext).

    Values no configured key decrypts are counted and left alone: after a run with
    `undecryptable == 0` everywhere, every key but the first can be removed.
    """
    _configured()  # fail on a missing or malformed key before reading anything
    counts = []
    for model, field in encrypted_fields():
        count = RotationCount(label=f"{model._meta.label}.{field.name}")
        for pk, stored in _stored_values(model, field):
            try:
                new = reencrypt(stored)
            except DecryptionError:
                count.undecryptable += 1
                logger.error(
                    "Cannot decrypt %s of %s with any FIELD_ENCRYPTION_KEYS key",
                    field.name,
                    pk,
                    extra={"model": model._meta.label, "field": field.name, "pk": str(pk)},
                )
                continue
            if new is None:
                count.current += 1
                continue
            if not dry_run and not _replace(model, field, pk, stored, new):
                count.changed_meanwhile += 1
                continue
            if is_encrypted(stored):
                count.rotated += 1
            else:
                count.encrypted_plaintext += 1
        counts.append(count)
    return counts
