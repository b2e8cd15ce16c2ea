"""`manage.py rotate_field_encryption` says a key can go only when it checked every value."""

from __future__ import annotations

from io import StringIO
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.core.test_crypto import NEW_KEY, OLD_KEY, new_endpoint


def test_a_value_changed_meanwhile_is_not_reported_as_rotated(db, settings):
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    new_endpoint()
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    out = StringIO()

    # The application rewrote the row between the command's read and its write.
    with (
        mock.patch("apps.core.crypto._replace", return_value=False),
        pytest.raises(CommandError, match="changed while this ran"),
    ):
        call_command("rotate_field_encryption", stdout=out)

    assert "changed meanwhile" in out.getvalue()
    assert "can now be removed" not in out.getvalue()
