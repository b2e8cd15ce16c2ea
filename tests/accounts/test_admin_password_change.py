"""The admin's own "Change password" page checks the current password under the sign-in guard
and changes it through the service the API's `/me/password/` uses."""

import pytest
from django.test import Client, override_settings
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

from apps.accounts.models import User
from apps.audit.models import AuditAction, AuditEvent
from apps.notifications.models import EmailOutbox
from tests.factories import UserFactory, tokens_for

pytestmark = pytest.mark.django_db

PASSWORD = "Correct-horse-battery-9"
NEW_PASSWORD = "Another-staple-battery-7"
URL = "/admin/password_change/"


def operator(email: str = "ops@example.com") -> User:
    return UserFactory(email=email, password=PASSWORD, is_staff=True)


def change(client: Client, old: str, new: str = NEW_PASSWORD):
    return client.post(URL, {"old_password": old, "new_password1": new, "new_password2": new})


@override_settings(LOGIN_RATE_PER_ACCOUNT="3/15m", LOGIN_RATE_PER_IP="100/15m")
def test_wrong_current_passwords_lock_the_page_like_a_sign_in(client):
    user = operator()
    client.force_login(user)

    failures = [change(client, f"wrong-{i}") for i in range(3)]
    locked = change(client, PASSWORD)

    assert [r.status_code for r in failures] == [200, 200, 200]
    assert b"Your old password was entered incorrectly" in failures[0].content
    assert locked.status_code == 429  # even to the right password
    assert int(locked["Retry-After"]) > 0
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    # The same counter as the sign-in's: the admin login of the account is locked too.
    login = Client().post("/admin/login/", {"username": user.email, "password": PASSWORD})
    assert login.status_code == 429


@override_settings(LOGIN_RATE_PER_ACCOUNT="3/15m", LOGIN_RATE_PER_IP="100/15m")
def test_an_invalid_new_password_is_no_guess(client):
    """The current password is only tested once the new one is acceptable: a form refused for
    its new password counts nothing."""
    client.force_login(operator())

    refused = [change(client, "wrong", new="short") for _ in range(4)]

    assert [r.status_code for r in refused] == [200] * 4
    assert change(client, PASSWORD).status_code == 302


def test_a_new_password_ends_every_other_session_and_token(
    client, django_capture_on_commit_callbacks
):
    user = operator()
    elsewhere = Client()
    elsewhere.force_login(user)
    pair = tokens_for(user)
    version = user.token_version
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=False):
        response = change(client, PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == "/admin/password_change/done/"
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert user.token_version > version
    # This session goes on; the other one and the API's tokens end.
    assert client.get("/admin/").status_code == 200
    assert elsewhere.get("/admin/").status_code == 302
    assert client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {pair.access}").status_code == 401
    refresh = OutstandingToken.objects.get(user=user)
    assert refresh.blacklistedtoken is not None
    # Recorded and told, as the API's change is.
    assert AuditEvent.objects.filter(action=AuditAction.PASSWORD_CHANGED, actor=user).exists()
    assert EmailOutbox.objects.filter(template="password_changed").exists()


def test_the_page_is_for_staff_only(client):
    user = UserFactory(password=PASSWORD)
    client.force_login(user)

    response = change(client, PASSWORD)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_the_page_still_renders(client):
    client.force_login(operator())

    response = client.get(URL)

    assert response.status_code == 200
    assert b'name="old_password"' in response.content


def set_password(client: Client, user: User, **fields):
    return client.post(f"/admin/accounts/user/{user.pk}/password/", fields)


def test_an_operator_setting_a_users_password_ends_their_tokens_and_is_recorded_and_told(
    client, admin_user, django_capture_on_commit_callbacks
):
    """The admin's "Change password" form of another account goes through the service: it used
    to end the tokens (User.save) but blacklisted no refresh token, recorded and told nothing."""
    user = UserFactory(email="member@example.com", password=PASSWORD)
    pair = tokens_for(user)
    client.force_login(admin_user)

    with django_capture_on_commit_callbacks(execute=False):
        response = set_password(
            client, user, usable_password="true", password1=NEW_PASSWORD, password2=NEW_PASSWORD
        )

    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {pair.access}").status_code == 401
    assert OutstandingToken.objects.get(user=user).blacklistedtoken is not None
    event = AuditEvent.objects.get(
        action=AuditAction.PASSWORD_CHANGED, target_id=str(user.public_id)
    )
    assert event.actor_id == admin_user.pk
    assert event.metadata == {"via": "admin", "password_sign_in": True}
    assert EmailOutbox.objects.filter(
        template="password_changed", recipients__contains=[user.email]
    ).exists()
    # The operator's own session goes on.
    assert client.get("/admin/").status_code == 200


def test_an_operator_can_turn_password_sign_in_off(client, admin_user):
    user = UserFactory(email="member@example.com", password=PASSWORD)
    pair = tokens_for(user)
    client.force_login(admin_user)

    response = set_password(client, user, **{"usable_password": "false", "unset-password": "1"})

    assert response.status_code == 302
    user.refresh_from_db()
    assert not user.has_usable_password()
    # Its tokens end as with any password change.
    assert client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {pair.access}").status_code == 401
    event = AuditEvent.objects.get(
        action=AuditAction.PASSWORD_CHANGED, target_id=str(user.public_id)
    )
    assert event.metadata["password_sign_in"] is False
