"""Every outstanding token of a user, access tokens included, dies on these events."""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

from apps.accounts.models import Role, User
from apps.accounts.network import RequestMeta
from apps.accounts.services import password_change, user_deactivate, user_tokens_revoke
from apps.accounts.tokens import password_reset_token
from tests.factories import DEFAULT_PASSWORD, bearer, member, tokens_for

NEW_PASSWORD = "An-entirely-new-passphrase-77"


def me(client, access):
    return client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {access}")


def refresh(client, token):
    return client.post("/api/v1/auth/token/refresh/", {"refresh": token}, format="json")


def assert_revoked(client, pair):
    response = me(client, pair.access)
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"token_revoked", "user_inactive"}
    assert refresh(client, pair.refresh).status_code == 401


def assert_every_refresh_token_blacklisted(user):
    outstanding = OutstandingToken.objects.filter(user=user)
    assert outstanding.exists()
    assert all(hasattr(token, "blacklistedtoken") for token in outstanding)


@pytest.fixture
def user(db):
    return member(Role.OWNER).user


def test_password_change_revokes_every_other_session(api_client, user):
    device_1, device_2 = tokens_for(user), tokens_for(user)

    response = api_client.post(
        "/api/v1/me/password/",
        {"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {device_1.access}",
    )

    assert response.status_code == 200
    assert_revoked(api_client, device_1)
    assert_revoked(api_client, device_2)
    assert me(api_client, response.json()["access"]).status_code == 200
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_a_wrong_current_password_changes_nothing(api_client, user):
    pair = tokens_for(user)

    response = api_client.post(
        "/api/v1/me/password/",
        {"current_password": "wrong", "new_password": NEW_PASSWORD},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {pair.access}",
    )

    assert response.status_code == 400
    assert "current_password" in response.json()["error"]["details"]
    assert me(api_client, pair.access).status_code == 200


def test_a_weak_new_password_is_refused_by_the_validators(api_client, user):
    pair = tokens_for(user)

    response = api_client.post(
        "/api/v1/me/password/",
        {"current_password": DEFAULT_PASSWORD, "new_password": "12345678"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {pair.access}",
    )

    assert response.status_code == 400
    assert "password" in response.json()["error"]["details"]


def test_password_reset_revokes_every_session(api_client, user):
    device_1, device_2 = tokens_for(user), tokens_for(user)

    response = api_client.post(
        "/api/v1/auth/password-reset/confirm/",
        {"token": password_reset_token(user=user), "new_password": NEW_PASSWORD},
        format="json",
    )

    assert response.status_code == 200
    assert_revoked(api_client, device_1)
    assert_revoked(api_client, device_2)
    assert_every_refresh_token_blacklisted(user)


def test_deactivating_oneself_revokes_every_session(api_client, user):
    device_1, device_2 = tokens_for(user), tokens_for(user)

    response = api_client.post(
        "/api/v1/me/deactivate/",
        {"password": DEFAULT_PASSWORD},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {device_1.access}",
    )

    assert response.status_code == 204
    assert_revoked(api_client, device_1)
    assert_revoked(api_client, device_2)
    assert_every_refresh_token_blacklisted(user)


def test_deactivation_by_an_operator_revokes_every_session(api_client, user):
    pair = tokens_for(user)

    user_deactivate(user=user, actor=None, force=True, meta=RequestMeta())

    assert_revoked(api_client, pair)


def test_removal_from_an_organisation_revokes_every_session(api_client, db):
    admin = member(Role.ADMIN)
    removed = member(Role.MEMBER, organisation=admin.organisation)
    elsewhere = member(Role.OWNER)
    removed.user.memberships.create(organisation=elsewhere.organisation, role=Role.MEMBER)
    pair = tokens_for(removed.user, elsewhere.organisation)

    response = api_client.delete(f"/api/v1/members/{removed.id}/", **bearer(admin.user))

    assert response.status_code == 204
    assert_revoked(api_client, pair)
    assert_every_refresh_token_blacklisted(removed.user)


def test_a_password_set_outside_the_api_also_revokes_tokens(api_client, user):
    pair = tokens_for(user)

    user.set_password(NEW_PASSWORD)  # as the admin form and `changepassword` do
    user.save()

    assert_revoked(api_client, pair)


def test_turning_password_sign_in_off_revokes_tokens_too(api_client, user):
    pair = tokens_for(user)
    version = user.token_version

    user.set_unusable_password()  # Django leaves `_password` unset for this one
    user.save(update_fields=["password"])

    assert_revoked(api_client, pair)
    user.refresh_from_db()
    assert user.token_version == version + 1
    user.save()  # a later save of the same instance revokes nothing more
    user.refresh_from_db()
    assert user.token_version == version + 1


def test_a_hash_upgrade_at_sign_in_keeps_existing_tokens(api_client, user):
    pair = tokens_for(user)

    with override_settings(ARGON2_TIME_COST=2):
        response = api_client.post(
            "/api/v1/auth/token/",
            {"email": user.email, "password": DEFAULT_PASSWORD},
            format="json",
        )
        user.refresh_from_db()

    assert response.status_code == 200
    assert "t=2" in user.password
    assert me(api_client, pair.access).status_code == 200


def test_a_password_change_does_not_undo_a_deactivation_made_meanwhile(user):
    """The user object of a request was loaded when it authenticated; saving all of its fields
    would write `is_active` back as it was then."""
    loaded = User.objects.get(pk=user.pk)  # as the request authenticated it
    User.objects.filter(pk=user.pk).update(is_active=False, full_name="Changed meanwhile")

    password_change(
        user=loaded,
        current_password=DEFAULT_PASSWORD,
        new_password=NEW_PASSWORD,
        meta=RequestMeta(),
    )

    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert not user.is_active
    assert user.full_name == "Changed meanwhile"


def test_a_deactivation_saved_by_any_path_revokes_tokens_for_good(api_client, user):
    """Unticking is_active outside the services (a shell, another form) still revokes: turning
    it back on must not revive the tokens."""
    pair = tokens_for(user)

    user.is_active = False
    user.save()
    user.is_active = True
    user.save()

    assert_revoked(api_client, pair)
    assert me(api_client, tokens_for(user).access).status_code == 200


def test_a_new_password_saved_on_a_stale_user_still_revokes_newer_tokens(api_client, user):
    """The version is raised in SQL: a user loaded before a "sign out everywhere" must not write
    back its old version + 1, the version of the tokens issued since."""
    loaded = User.objects.get(pk=user.pk)
    user_tokens_revoke(user=user)  # elsewhere: version 0 -> 1
    issued_since = tokens_for(user)

    loaded.set_password(NEW_PASSWORD)
    loaded.save()

    assert loaded.token_version == 2
    assert_revoked(api_client, issued_since)
