"""Argon2 costs from settings, and the operators' admin pages and actions."""

from __future__ import annotations

import pytest
from django.contrib.auth.hashers import check_password, get_hasher, make_password
from django.test import override_settings

from apps.accounts.models import ApiKey, Invitation, Role, User
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import ApiKeyFactory, InvitationFactory, member, tokens_for


def test_passwords_are_hashed_with_argon2id_at_the_configured_cost():
    with override_settings(ARGON2_TIME_COST=3, ARGON2_MEMORY_COST=1024, ARGON2_PARALLELISM=2):
        encoded = make_password("a passphrase")

    assert encoded.startswith("argon2$argon2id$v=19$m=1024,t=3,p=2$")
    assert check_password("a passphrase", encoded)


def test_a_cost_change_marks_existing_hashes_for_upgrade():
    encoded = make_password("a passphrase")

    with override_settings(ARGON2_TIME_COST=2):
        assert get_hasher("argon2").must_update(encoded)
    assert not get_hasher("argon2").must_update(encoded)


def test_the_production_default_is_owasps_argon2_profile():
    from lexiscore.settings import base

    assert (base.ARGON2_TIME_COST, base.ARGON2_MEMORY_COST, base.ARGON2_PARALLELISM) == (
        2,
        19_456,
        1,
    )


@pytest.mark.parametrize(
    "url",
    [
        "/admin/accounts/user/?q=example&is_active__exact=1&verified=yes",
        "/admin/accounts/organisation/?q=org&plan__exact=free",
        "/admin/accounts/membership/?role__exact=owner&q=example",
        "/admin/accounts/invitation/?status__exact=pending",
        "/admin/accounts/apikey/?q=key",
        "/admin/audit/auditevent/?action__exact=auth.login_failed&q=1",
        "/admin/accounts/user/add/",
    ],
)
def test_admin_pages_load_with_search_and_filters(admin_client, db, url):
    member(Role.OWNER)

    response = admin_client.get(url)

    assert response.status_code == 200


def test_admin_change_pages_load(admin_client, db):
    membership = member(Role.OWNER)
    api_key = ApiKeyFactory(organisation=membership.organisation)
    invitation = InvitationFactory(organisation=membership.organisation)

    for url in [
        f"/admin/accounts/user/{membership.user.pk}/change/",
        f"/admin/accounts/organisation/{membership.organisation.pk}/change/",
        f"/admin/accounts/membership/{membership.pk}/change/",
        f"/admin/accounts/apikey/{api_key.pk}/change/",
        f"/admin/accounts/invitation/{invitation.pk}/change/",
    ]:
        assert admin_client.get(url).status_code == 200, url


def test_operators_create_users_in_the_admin(admin_client, db):
    response = admin_client.post(
        "/admin/accounts/user/add/",
        {
            "email": "Made.By@Operator.com",
            "full_name": "Made",
            "usable_password": "true",
            "password1": "Operator-Made-Pass-42",
            "password2": "Operator-Made-Pass-42",
        },
    )

    assert response.status_code == 302
    assert User.objects.get(email="made.by@operator.com").check_password("Operator-Made-Pass-42")


def test_the_deactivate_action_ends_every_session(admin_client, api_client, db):
    target = member(Role.MEMBER).user
    pair = tokens_for(target)

    response = admin_client.post(
        "/admin/accounts/user/",
        {"action": "deactivate_users", "_selected_action": [target.pk]},
    )

    assert response.status_code == 302
    target.refresh_from_db()
    assert not target.is_active
    me = api_client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {pair.access}")
    assert me.status_code == 401
    event = AuditEvent.objects.get(action=AuditAction.USER_DEACTIVATED)
    assert event.metadata == {"by_operator": True}
    assert event.actor.is_superuser


def test_the_resend_invitation_action_sends_a_fresh_link(admin_client, db, send_emails, mailoutbox):
    invitation = InvitationFactory()

    with send_emails():
        response = admin_client.post(
            "/admin/accounts/invitation/",
            {"action": "resend_invitations", "_selected_action": [invitation.pk]},
        )

    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.sent_count == 2
    assert mailoutbox[0].to == [invitation.email]


def test_the_revoke_keys_action(admin_client, db):
    api_key = ApiKeyFactory()

    admin_client.post(
        "/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [api_key.pk]}
    )

    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is not None


def test_operators_cannot_add_keys_or_invitations_in_the_admin(admin_client, db):
    assert admin_client.get("/admin/accounts/apikey/add/").status_code == 403
    assert admin_client.get("/admin/accounts/invitation/add/").status_code == 403
    assert Invitation.objects.count() == 0
