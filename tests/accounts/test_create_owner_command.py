"""`manage.py create_owner` bootstraps an organisation and a verified owner who can sign in."""

import pytest
from django.core.management import CommandError, call_command

from apps.accounts.models import Membership, Role, User

pytestmark = pytest.mark.django_db


def test_create_owner_makes_a_verified_owner_who_can_sign_in(client, monkeypatch):
    monkeypatch.setenv("LEXISCORE_OWNER_PASSWORD", "Plenty-long-passphrase-42")

    call_command("create_owner", "Boss@Example.com", "Acme Radio", "--plan", "team")

    user = User.objects.get(email="boss@example.com")
    membership = Membership.objects.get(user=user)
    assert user.email_verified_at is not None
    assert membership.role == Role.OWNER
    assert membership.organisation.plan == "team"
    response = client.post(
        "/api/v1/auth/token/",
        {"email": "boss@example.com", "password": "Plenty-long-passphrase-42"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.json()


def test_create_owner_refuses_a_weak_password(monkeypatch):
    monkeypatch.setenv("LEXISCORE_OWNER_PASSWORD", "short")

    with pytest.raises(CommandError, match="too short"):
        call_command("create_owner", "x@example.com", "Org")
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["not-an-email", "Org"], "valid email"),
        (["x@example.com", "Org", "--plan", "platinum"], "not a valid choice"),
        (["x@example.com", "O" * 151], "at most 150 characters"),
        (["x@example.com", ""], "cannot be blank"),
        (["x@example.com", "Org", "--full-name", "N" * 151], "at most 150 characters"),
    ],
)
def test_create_owner_refuses_bad_values_before_writing_anything(monkeypatch, args, message):
    monkeypatch.setenv("LEXISCORE_OWNER_PASSWORD", "Plenty-long-passphrase-42")

    with pytest.raises(CommandError, match=message):
        call_command("create_owner", *args)

    assert not User.objects.exists()
