"""Sign-in, JWT validation, refresh rotation with reuse detection, sign-out."""

from __future__ import annotations

import base64
import json
import threading
import time

import jwt
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.accounts.models import Role
from apps.accounts.network import RequestMeta
from apps.accounts.services import auth_refresh, tokens_flush_expired
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import DEFAULT_PASSWORD, UserFactory, member, tokens_for

TOKEN_URL = "/api/v1/auth/token/"
REFRESH_URL = "/api/v1/auth/token/refresh/"
ME_URL = "/api/v1/me/"


def login(client, email, password=DEFAULT_PASSWORD, **extra):
    return client.post(TOKEN_URL, {"email": email, "password": password, **extra}, format="json")


def get_me(client, access):
    return client.get(ME_URL, HTTP_AUTHORIZATION=f"Bearer {access}")


def assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["request_id"] == response["X-Request-ID"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def user(db):
    return member(Role.OWNER).user


# ---- Sign-in ----------------------------------------------------------------------------------
def test_login_returns_a_short_lived_access_token_and_a_refresh_token(api_client, user):
    response = login(api_client, user.email.upper())

    assert response.status_code == 200
    access = claims(response.json()["access"])
    refresh = claims(response.json()["refresh"])
    assert access["token_type"] == "access"
    assert refresh["token_type"] == "refresh"
    assert access["user_id"] == str(user.public_id)
    assert access["ver"] == user.token_version
    assert access["aud"] == "lexiscore-api"
    assert access["iss"] == "lexiscore"
    assert 5 * 60 <= access["exp"] - access["iat"] <= 15 * 60
    assert get_me(api_client, response.json()["access"]).status_code == 200


@pytest.mark.django_db
def test_wrong_password_and_unknown_account_get_the_same_answer(api_client, user):
    wrong = login(api_client, user.email, "not-the-password")
    unknown = login(api_client, "nobody@example.com", "not-the-password")

    first = assert_error(wrong, 401, "invalid_credentials")
    second = assert_error(unknown, 401, "invalid_credentials")
    assert first["message"] == second["message"]
    assert first["details"] == second["details"] == {}


def test_a_deactivated_user_cannot_sign_in(api_client, user):
    user.is_active = False
    user.save(update_fields=["is_active"])

    response = login(api_client, user.email)

    assert_error(response, 401, "invalid_credentials")


@pytest.mark.django_db
def test_an_unverified_address_cannot_sign_in(api_client):
    user = UserFactory(email_verified_at=None)

    response = login(api_client, user.email)

    assert_error(response, 403, "email_not_verified")


def test_login_can_put_an_organisation_in_the_token(api_client, user):
    organisation = user.memberships.get().organisation

    response = login(api_client, user.email, organisation=str(organisation.id))

    assert claims(response.json()["access"])["org"] == str(organisation.id)


def test_login_refuses_an_organisation_the_user_is_not_in(api_client, user):
    other = member(Role.OWNER).organisation

    response = login(api_client, user.email, organisation=str(other.id))

    error = assert_error(response, 400, "validation_error")
    assert "organisation" in error["details"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "a@example.com"},
        {"email": ["a"], "password": {"x": 1}},
        {"email": "a@example.com", "password": "x", "is_staff": True},
        {"email": "a@example.com", "password": "x", "organisation": "not-a-uuid"},
    ],
)
@pytest.mark.django_db
def test_malformed_login_input_is_a_400(api_client, body):
    response = api_client.post(TOKEN_URL, body, format="json")

    assert_error(response, 400, "validation_error")


def test_a_stale_token_does_not_block_signing_in(api_client, user):
    response = api_client.post(
        TOKEN_URL,
        {"email": user.email, "password": DEFAULT_PASSWORD},
        format="json",
        HTTP_AUTHORIZATION="Bearer garbage",
    )

    assert response.status_code == 200


# ---- Token validation -------------------------------------------------------------------------
def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _forge(kind: str, valid: str) -> str:
    payload = claims(valid)
    header_b64, payload_b64, signature = valid.split(".")
    key = settings.SIMPLE_JWT["SIGNING_KEY"]
    if kind == "alg_none":
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload_b64}."
    if kind == "alg_hs512":
        return jwt.encode(payload, key, algorithm="HS512")
    if kind == "tampered_user":
        other = UserFactory()
        return f"{header_b64}.{_b64({**payload, 'user_id': str(other.public_id)})}.{signature}"
    if kind == "signed_with_secret_key":
        return jwt.encode(payload, settings.SECRET_KEY, algorithm="HS256")
    if kind == "wrong_audience":
        return jwt.encode({**payload, "aud": "another-service"}, key, algorithm="HS256")
    if kind == "wrong_issuer":
        return jwt.encode({**payload, "iss": "someone-else"}, key, algorithm="HS256")
    if kind == "expired":
        past = int(time.time()) - 3600
        return jwt.encode({**payload, "iat": past - 600, "exp": past}, key, algorithm="HS256")
    if kind == "no_exp":
        return jwt.encode({k: v for k, v in payload.items() if k != "exp"}, key, algorithm="HS256")
    if kind == "no_version":
        return jwt.encode({k: v for k, v in payload.items() if k != "ver"}, key, algorithm="HS256")
    if kind == "jku_attacker_key":
        return jwt.encode(
            payload,
            "attacker-key-0123456789abcdef0123456789",
            algorithm="HS256",
            headers={"jku": "https://attacker.example/jwks.json", "kid": "attacker"},
        )
    if kind == "truncated":
        return valid[: len(valid) // 2]
    if kind == "garbage":
        return "not.a.jwt"
    raise AssertionError(kind)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize(
    "kind",
    [
        "alg_none",
        "alg_hs512",
        "tampered_user",
        "signed_with_secret_key",
        "wrong_audience",
        "wrong_issuer",
        "expired",
        "no_exp",
        "no_version",
        "jku_attacker_key",
        "truncated",
        "garbage",
    ],
)
def test_forged_or_invalid_access_tokens_get_401_with_the_error_body(api_client, user, kind):
    forged = _forge(kind, tokens_for(user).access)

    response = get_me(api_client, forged)

    error = assert_error(response, 401)
    assert error["code"] in {"token_not_valid", "token_revoked"}
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_jwt_settings_pin_the_algorithm_and_use_their_own_key():
    jwt_settings = settings.SIMPLE_JWT

    assert jwt_settings["ALGORITHM"] == "HS256"
    assert jwt_settings["SIGNING_KEY"] != settings.SECRET_KEY
    assert len(jwt_settings["SIGNING_KEY"].encode()) * 8 >= 256
    assert jwt_settings["LEEWAY"] <= 5
    assert jwt_settings["ROTATE_REFRESH_TOKENS"] is True
    assert jwt_settings["BLACKLIST_AFTER_ROTATION"] is True
    assert jwt_settings["ACCESS_TOKEN_LIFETIME"].total_seconds() <= 15 * 60
    assert "rest_framework_simplejwt.token_blacklist" in settings.INSTALLED_APPS


def test_a_refresh_token_is_not_an_access_token(api_client, user):
    pair = tokens_for(user)

    as_bearer = get_me(api_client, pair.refresh)
    as_refresh = api_client.post(REFRESH_URL, {"refresh": pair.access}, format="json")

    assert_error(as_bearer, 401, "token_not_valid")
    assert_error(as_refresh, 401, "token_not_valid")


# ---- Refresh rotation -------------------------------------------------------------------------
def test_refresh_rotates_and_the_old_refresh_token_is_blacklisted(api_client, user):
    pair = tokens_for(user)

    response = api_client.post(REFRESH_URL, {"refresh": pair.refresh}, format="json")

    assert response.status_code == 200
    assert response.json()["refresh"] != pair.refresh
    assert claims(response.json()["refresh"])["jti"] != claims(pair.refresh)["jti"]
    assert BlacklistedToken.objects.filter(token__jti=claims(pair.refresh)["jti"]).exists()
    assert get_me(api_client, response.json()["access"]).status_code == 200


def test_reusing_a_rotated_refresh_token_fails_and_ends_every_session(api_client, user):
    pair = tokens_for(user)
    rotated = api_client.post(REFRESH_URL, {"refresh": pair.refresh}, format="json").json()

    reuse = api_client.post(
        REFRESH_URL, {"refresh": pair.refresh}, format="json", REMOTE_ADDR="198.51.100.7"
    )

    assert_error(reuse, 401, "token_not_valid")
    assert_error(get_me(api_client, rotated["access"]), 401, "token_revoked")
    after = api_client.post(REFRESH_URL, {"refresh": rotated["refresh"]}, format="json")
    assert_error(after, 401, "token_not_valid")
    event = AuditEvent.objects.get(
        action=AuditAction.REFRESH_REUSED, request_id=reuse["X-Request-ID"]
    )
    assert event.actor == user
    assert event.ip_address == "198.51.100.7"
    assert event.request_id == reuse["X-Request-ID"]
    assert event.metadata["sessions_revoked"] is True


@override_settings(JWT_REVOKE_ON_REFRESH_REUSE=False)
def test_reuse_can_be_configured_to_refuse_only_the_reused_token(api_client, user):
    pair = tokens_for(user)
    rotated = api_client.post(REFRESH_URL, {"refresh": pair.refresh}, format="json").json()

    reuse = api_client.post(REFRESH_URL, {"refresh": pair.refresh}, format="json")

    assert_error(reuse, 401)
    assert get_me(api_client, rotated["access"]).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_refreshes_with_one_token_issue_at_most_one_pair():
    user = member(Role.OWNER).user
    refresh = tokens_for(user).refresh
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt() -> None:
        barrier.wait()
        try:
            auth_refresh(refresh=refresh, meta=RequestMeta())
            outcomes.append("pair")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["InvalidToken", "pair"]
    assert OutstandingToken.objects.filter(user=user).count() == 2


def test_a_deactivated_user_cannot_refresh(api_client, user):
    pair = tokens_for(user)
    user.is_active = False
    user.save(update_fields=["is_active"])

    response = api_client.post(REFRESH_URL, {"refresh": pair.refresh}, format="json")

    assert_error(response, 401, "token_not_valid")


# ---- Sign-out ---------------------------------------------------------------------------------
def test_logout_blacklists_the_refresh_token(api_client, user):
    pair = tokens_for(user)

    response = api_client.post("/api/v1/auth/logout/", {"refresh": pair.refresh}, format="json")
    again = api_client.post("/api/v1/auth/logout/", {"refresh": pair.refresh}, format="json")

    assert response.status_code == 204
    assert again.status_code == 204
    refresh = api_client.post(REFRESH_URL, {"refresh": pair.refresh}, format="json")
    assert_error(refresh, 401)
    assert AuditEvent.objects.filter(action=AuditAction.LOGOUT, actor=user).count() == 1


@pytest.mark.django_db
def test_logout_with_an_invalid_token_is_a_401(api_client):
    response = api_client.post("/api/v1/auth/logout/", {"refresh": "nope"}, format="json")

    assert_error(response, 401, "token_not_valid")


def test_logout_everywhere_revokes_every_access_token(api_client, user):
    device_1 = tokens_for(user)
    device_2 = tokens_for(user)

    response = api_client.post(
        "/api/v1/auth/logout-all/", HTTP_AUTHORIZATION=f"Bearer {device_1.access}"
    )

    assert response.status_code == 204
    assert_error(get_me(api_client, device_1.access), 401, "token_revoked")
    assert_error(get_me(api_client, device_2.access), 401, "token_revoked")
    refresh = api_client.post(REFRESH_URL, {"refresh": device_2.refresh}, format="json")
    assert_error(refresh, 401)


# ---- Housekeeping -----------------------------------------------------------------------------
def test_flushing_expired_tokens_deletes_only_expired_rows(user):
    live = tokens_for(user)
    expired = tokens_for(user)
    OutstandingToken.objects.filter(jti=claims(expired.refresh)["jti"]).update(
        expires_at=timezone.now() - timezone.timedelta(seconds=1)
    )

    deleted = tokens_flush_expired()

    assert deleted == 1
    assert list(OutstandingToken.objects.values_list("jti", flat=True)) == [
        claims(live.refresh)["jti"]
    ]
