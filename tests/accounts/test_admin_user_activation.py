"""Operators deactivate and reactivate accounts through the admin's actions (the services), never
by unticking "Active" in the change form: that revoked no token, so a later reactivation brought
every old session back, and it left no audit event."""

from __future__ import annotations

import pytest

from apps.accounts.models import Role, User
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import member, tokens_for


def me(client, access):
    return client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {access}")


def refresh(client, token):
    return client.post("/api/v1/auth/token/refresh/", {"refresh": token}, format="json")


def action(admin_client, name: str, user: User):
    return admin_client.post(
        "/admin/accounts/user/", {"action": name, "_selected_action": [user.pk]}
    )


@pytest.fixture
def target(db):
    return member(Role.MEMBER)


def test_the_change_form_shows_active_read_only_and_ignores_it(admin_client, target):
    user = target.user
    form = admin_client.get(f"/admin/accounts/user/{user.pk}/change/")
    # The form as a browser sends it with "Active" unticked (an unticked box sends nothing).
    posted = admin_client.post(
        f"/admin/accounts/user/{user.pk}/change/",
        {
            "email": user.email,
            "full_name": "Renamed",
            "email_verified_at_0": "2024-01-01",
            "email_verified_at_1": "00:00:00",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "1",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-id": str(target.id),
            "memberships-0-user": str(user.pk),
            "memberships-0-organisation": str(target.organisation_id),
            "memberships-0-role": target.role,
        },
    )

    assert form.status_code == 200
    assert 'name="is_active"' not in form.content.decode()
    assert posted.status_code == 302, posted.content.decode()[:2000]
    user.refresh_from_db()
    assert user.full_name == "Renamed"  # the form was saved...
    assert user.is_active  # ...but "Active" is not one of its fields


def test_deactivation_then_reactivation_keeps_old_tokens_dead(admin_client, api_client, target):
    user = target.user
    pair = tokens_for(user)

    deactivated = action(admin_client, "deactivate_users", user)
    reactivated = action(admin_client, "reactivate_users", user)

    assert deactivated.status_code == reactivated.status_code == 302
    user.refresh_from_db()
    assert user.is_active
    assert me(api_client, pair.access).status_code == 401
    assert refresh(api_client, pair.refresh).status_code == 401
    fresh = tokens_for(user)
    assert me(api_client, fresh.access).status_code == 200
    reactivation = AuditEvent.objects.get(action=AuditAction.USER_REACTIVATED)
    assert reactivation.actor.is_superuser
    assert reactivation.target_id == str(user.public_id)
    assert AuditEvent.objects.filter(action=AuditAction.USER_DEACTIVATED).count() == 1


def test_reactivation_revokes_tokens_of_an_account_switched_off_elsewhere(
    admin_client, api_client, target
):
    """An account deactivated outside the services (SQL, a shell) kept its tokens: reactivating
    it must not revive them."""
    user = target.user
    pair = tokens_for(user)
    User.objects.filter(pk=user.pk).update(is_active=False)

    action(admin_client, "reactivate_users", user)

    user.refresh_from_db()
    assert user.is_active
    assert me(api_client, pair.access).status_code == 401
    assert refresh(api_client, pair.refresh).status_code == 401


def test_reactivating_an_active_user_does_nothing(admin_client, target):
    version = target.user.token_version

    action(admin_client, "reactivate_users", target.user)

    target.user.refresh_from_db()
    assert target.user.token_version == version
    assert not AuditEvent.objects.filter(action=AuditAction.USER_REACTIVATED).exists()
