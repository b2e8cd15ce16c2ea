"""Registration, email verification and password reset, emails included."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
from django.core import signing
from django.test import override_settings

from apps.accounts.models import Membership, Role, User
from apps.accounts.tokens import email_verification_token, password_reset_token
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import DEFAULT_PASSWORD, UserFactory, member

REGISTER_URL = "/api/v1/auth/register/"
PASSWORD = "Correct-Horse-Battery-Staple-9"


def token_in(message) -> str:
    url = re.search(r"https?://\S+", message.body).group(0)
    return parse_qs(urlparse(url).query)["token"][0]


def register(client, **overrides):
    body = {
        "email": "New.Person@Example.com",
        "password": PASSWORD,
        "full_name": "New Person",
        "organisation_name": "Acme",
        **overrides,
    }
    return client.post(REGISTER_URL, body, format="json")


@pytest.mark.django_db
def test_registration_creates_an_unverified_owner_and_emails_a_link(
    api_client, send_emails, mailoutbox
):
    with send_emails():
        response = register(api_client)

    assert response.status_code == 202
    user = User.objects.get(email="new.person@example.com")
    assert user.email_verified_at is None
    assert user.password.startswith("argon2$argon2id$")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organisation.name == "Acme"
    assert [m.to for m in mailoutbox] == [["new.person@example.com"]]
    assert mailoutbox[0].subject == "Confirm your email address for LexisCore"
    assert "http://localhost:8000/verify-email?token=" in mailoutbox[0].body
    assert mailoutbox[0].alternatives[0][1] == "text/html"


@pytest.mark.django_db
def test_the_emailed_link_verifies_the_address_and_sign_in_works(
    api_client, send_emails, mailoutbox
):
    with send_emails():
        register(api_client)

    verified = api_client.post(
        "/api/v1/auth/verify-email/", {"token": token_in(mailoutbox[0])}, format="json"
    )
    login = api_client.post(
        "/api/v1/auth/token/",
        {"email": "new.person@example.com", "password": PASSWORD},
        format="json",
    )

    assert verified.status_code == 200
    assert login.status_code == 200
    assert AuditEvent.objects.filter(action=AuditAction.EMAIL_VERIFIED).count() == 1


@pytest.mark.django_db
def test_registering_a_taken_address_answers_the_same_and_tells_its_owner(
    api_client, send_emails, mailoutbox
):
    existing = UserFactory(email="taken@example.com")

    with send_emails():
        response = register(api_client, email="Taken@Example.com")

    assert response.status_code == 202
    assert response.json() == register_response_body()
    assert User.objects.filter(email="taken@example.com").count() == 1
    existing.refresh_from_db()
    assert existing.check_password(DEFAULT_PASSWORD)
    assert mailoutbox[0].subject == "Your LexisCore account"


def register_response_body():
    return {"detail": "Check your inbox for a link to confirm your address."}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"password": "short"}, "password"),
        ({"password": "password123456"}, "password"),
        ({"password": "new.person@example.com"}, "password"),
        ({"email": "not-an-email"}, "email"),
        ({"organisation_name": ""}, "organisation_name"),
        ({"is_staff": True}, "is_staff"),
        ({"role": "owner"}, "role"),
        ({"organisation": "00000000-0000-0000-0000-000000000000"}, "organisation"),
    ],
)
@pytest.mark.django_db
def test_registration_validates_its_input_and_refuses_extra_fields(api_client, override, field):
    response = register(api_client, **override)

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "make_token",
    [
        lambda: "",
        lambda: "garbage",
        lambda: "a" * 1000,
        lambda: signing.dumps({"u": "x", "e": "y"}, salt="other-salt"),
    ],
    ids=["empty", "garbage", "long", "other-salt"],
)
@pytest.mark.django_db
def test_a_bad_verification_token_is_a_400(api_client, make_token):
    token = make_token()

    response = api_client.post("/api/v1/auth/verify-email/", {"token": token}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"invalid_token", "validation_error"}


@pytest.mark.django_db
def test_a_verification_token_expires(api_client):
    user = UserFactory(email_verified_at=None)
    token = email_verification_token(user=user)

    with override_settings(EMAIL_VERIFICATION_MAX_AGE=-1):
        response = api_client.post("/api/v1/auth/verify-email/", {"token": token}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_token"


@pytest.mark.django_db
def test_verification_can_be_resent_without_revealing_the_account(
    api_client, send_emails, mailoutbox
):
    UserFactory(email="pending@example.com", email_verified_at=None)

    with send_emails():
        known = api_client.post(
            "/api/v1/auth/verify-email/resend/", {"email": "pending@example.com"}, format="json"
        )
        unknown = api_client.post(
            "/api/v1/auth/verify-email/resend/", {"email": "ghost@example.com"}, format="json"
        )

    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert [m.to for m in mailoutbox] == [["pending@example.com"]]


# ---- Password reset ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_password_reset_emails_a_one_time_link(api_client, send_emails, mailoutbox):
    user = member(Role.MEMBER).user

    with send_emails():
        response = api_client.post(
            "/api/v1/auth/password-reset/", {"email": user.email}, format="json"
        )
    token = token_in(mailoutbox[0])
    with send_emails():
        first = api_client.post(
            "/api/v1/auth/password-reset/confirm/",
            {"token": token, "new_password": PASSWORD},
            format="json",
        )
    second = api_client.post(
        "/api/v1/auth/password-reset/confirm/",
        {"token": token, "new_password": "Another-Passphrase-42x"},
        format="json",
    )

    assert response.status_code == 202
    assert first.status_code == 200
    assert second.status_code == 400
    assert second.json()["error"]["code"] == "invalid_token"
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert mailoutbox[-1].subject == "Your LexisCore password was changed"
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {AuditAction.PASSWORD_RESET_REQUESTED, AuditAction.PASSWORD_RESET} <= actions


@pytest.mark.django_db
def test_password_reset_answers_the_same_for_unknown_addresses(api_client, send_emails, mailoutbox):
    user = UserFactory()

    with send_emails():
        known = api_client.post(
            "/api/v1/auth/password-reset/", {"email": user.email}, format="json"
        )
        unknown = api_client.post(
            "/api/v1/auth/password-reset/", {"email": "ghost@example.com"}, format="json"
        )

    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_a_reset_link_dies_after_the_timeout(api_client):
    user = UserFactory()
    token = password_reset_token(user=user)

    with override_settings(PASSWORD_RESET_TIMEOUT=-1):
        response = api_client.post(
            "/api/v1/auth/password-reset/confirm/",
            {"token": token, "new_password": PASSWORD},
            format="json",
        )

    assert response.status_code == 400


@pytest.mark.parametrize("token", ["", "nodot", "0" * 32 + ".abc", "zz" * 16 + ".abc"])
@pytest.mark.django_db
def test_a_malformed_reset_token_is_a_400(api_client, token):
    response = api_client.post(
        "/api/v1/auth/password-reset/confirm/",
        {"token": token, "new_password": PASSWORD},
        format="json",
    )

    assert response.status_code == 400
