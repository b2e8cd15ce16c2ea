"""Session logins (the admin's, the browsable API's) share the sign-in brute-force guard, and a
session ends with the user's tokens."""

import pytest
from django.test import override_settings

from apps.accounts.services._common import user_tokens_revoke
from tests.factories import UserFactory, bearer, member

pytestmark = pytest.mark.django_db


def operator(email: str):
    """A superuser who signs in to the admin with the tests' password."""
    return UserFactory(
        email=email, password="Correct-horse-battery-9", is_staff=True, is_superuser=True
    )


@override_settings(LOGIN_RATE_PER_ACCOUNT="3/15m", LOGIN_RATE_PER_IP="100/15m")
def test_admin_login_locks_an_account_after_repeated_failures(client):
    user = operator("ops@example.com")

    failures = [
        client.post("/admin/login/", {"username": user.email, "password": "wrong"}).status_code
        for _ in range(3)
    ]
    locked = client.post(
        "/admin/login/", {"username": user.email, "password": "Correct-horse-battery-9"}
    )

    assert failures == [200, 200, 200]
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) > 0


def test_admin_login_still_lets_the_right_password_in(client):
    user = operator("ops2@example.com")

    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": user.email, "password": "Correct-horse-battery-9", "next": "/admin/"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/admin/"


PASSWORD = "Correct-horse-battery-9"


@override_settings(LOGIN_RATE_PER_ACCOUNT="3/15m", LOGIN_RATE_PER_IP="100/15m")
def test_browsable_api_login_is_guarded_like_the_token_sign_in(client):
    user = member(email="api@example.com", password=PASSWORD).user

    failures = [
        client.post("/api-auth/login/", {"username": user.email, "password": "wrong"}).status_code
        for _ in range(3)
    ]
    locked = client.post("/api-auth/login/", {"username": user.email, "password": PASSWORD})

    assert failures == [200, 200, 200]
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) > 0
    assert client.get("/api/v1/me/").status_code == 401


def test_browsable_api_login_signs_in_and_the_session_uses_the_api(client):
    user = member(email="browse@example.com", password=PASSWORD).user

    page = client.get("/api-auth/login/")
    response = client.post(
        "/api-auth/login/?next=/api/v1/jobs/",
        {"username": user.email, "password": PASSWORD, "next": "/api/v1/jobs/"},
    )

    assert page.status_code == 200
    assert b'name="password"' in page.content
    assert response.status_code == 302
    assert response["Location"] == "/api/v1/jobs/"
    assert client.get("/api/v1/me/").json()["email"] == user.email


def test_browsable_api_login_refuses_an_unverified_address(client):
    user = member(email="new@example.com", password=PASSWORD, email_verified_at=None).user

    response = client.post("/api-auth/login/", {"username": user.email, "password": PASSWORD})

    assert response.status_code == 200  # the form again, with the reason
    assert b"Verify your email address" in response.content
    assert client.get("/api/v1/me/").status_code == 401


def test_signing_out_everywhere_ends_sessions_too(client):
    user = member(email="everywhere@example.com", password=PASSWORD).user
    client.post("/api-auth/login/", {"username": user.email, "password": PASSWORD})
    assert client.get("/api/v1/me/").status_code == 200

    revoked = client.post("/api/v1/auth/logout-all/", **bearer(user))

    assert revoked.status_code == 204
    assert client.get("/api/v1/me/").status_code == 401


def test_a_new_admin_session_survives_nothing_but_revocation(client):
    user = operator("ops3@example.com")
    client.post("/admin/login/", {"username": user.email, "password": PASSWORD, "next": "/admin/"})
    assert client.get("/admin/").status_code == 200

    user_tokens_revoke(user=user)

    assert client.get("/admin/").status_code == 302  # back to the login page
