"""A member who is removed, leaves or is deactivated takes their grants with them: the API keys
they created and their pending invitations are revoked (and recorded), so a removed admin keeps
no way back into the organisation's data."""

from __future__ import annotations

import pytest

from apps.accounts.models import ApiKey, Invitation, Role
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import (
    DEFAULT_PASSWORD,
    ApiKeyFactory,
    InvitationFactory,
    MembershipFactory,
    api_key_header,
    bearer,
    member,
)

ACCEPT_URL = "/api/v1/invitations/accept/"


@pytest.fixture
def team(db):
    """An owner, and an admin who created a key and sent an invitation in the organisation, and
    also in an organisation of their own."""
    owner = member(Role.OWNER)
    organisation = owner.organisation
    admin = member(Role.ADMIN, organisation=organisation)
    elsewhere = MembershipFactory(user=admin.user, role=Role.OWNER)
    return {
        "owner": owner,
        "admin": admin,
        "key": ApiKeyFactory(organisation=organisation, created_by=admin.user),
        "owners_key": ApiKeyFactory(organisation=organisation, created_by=owner.user),
        "invitation": InvitationFactory(
            organisation=organisation, invited_by=admin.user, role=Role.ADMIN
        ),
        "owners_invitation": InvitationFactory(organisation=organisation, invited_by=owner.user),
        "accepted": InvitationFactory(
            organisation=organisation, invited_by=admin.user, status=Invitation.Status.ACCEPTED
        ),
        "key_elsewhere": ApiKeyFactory(organisation=elsewhere.organisation, created_by=admin.user),
        "invitation_elsewhere": InvitationFactory(
            organisation=elsewhere.organisation, invited_by=admin.user
        ),
    }


def is_revoked(api_key: ApiKey) -> bool:
    api_key.refresh_from_db()
    return api_key.revoked_at is not None


def status_of(invitation: Invitation) -> str:
    invitation.refresh_from_db()
    return invitation.status


def accept(client, invitation):
    return client.post(
        ACCEPT_URL,
        {"token": invitation.token, "password": "Another-long-passphrase-1"},
        format="json",
    )


def test_a_removed_admins_key_and_invitation_stop_working(api_client, team):
    owner, admin = team["owner"], team["admin"]

    response = api_client.delete(f"/api/v1/members/{admin.id}/", **bearer(owner.user))

    assert response.status_code == 204
    listed = api_client.get("/api/v1/members/", **api_key_header(team["key"]))
    assert listed.status_code == 401
    assert accept(api_client, team["invitation"]).status_code == 400
    assert is_revoked(team["key"])
    assert team["key"].revoked_by == owner.user
    assert status_of(team["invitation"]) == Invitation.Status.REVOKED
    # Other members' grants, other organisations and finished invitations are left alone.
    assert not is_revoked(team["owners_key"])
    assert status_of(team["owners_invitation"]) == Invitation.Status.PENDING
    assert status_of(team["accepted"]) == Invitation.Status.ACCEPTED
    assert not is_revoked(team["key_elsewhere"])
    assert status_of(team["invitation_elsewhere"]) == Invitation.Status.PENDING


def test_the_revocations_are_recorded_with_the_remover_and_the_reason(api_client, team):
    owner, admin = team["owner"], team["admin"]

    api_client.delete(f"/api/v1/members/{admin.id}/", **bearer(owner.user))

    key_event = AuditEvent.objects.get(action=AuditAction.API_KEY_REVOKED)
    invitation_event = AuditEvent.objects.get(action=AuditAction.INVITATION_REVOKED)
    for event in (key_event, invitation_event):
        assert event.actor == owner.user
        assert event.organisation_id == owner.organisation_id
        assert event.metadata["reason"] == "member_removed"
        assert event.metadata["author"] == str(admin.user.public_id)
    assert key_event.target_id == str(team["key"].id)
    assert key_event.metadata["prefix"] == team["key"].prefix
    assert invitation_event.target_id == str(team["invitation"].id)


def test_leaving_revokes_the_leavers_key_and_invitation_there(api_client, team):
    admin = team["admin"]

    response = api_client.post(
        f"/api/v1/organisations/{admin.organisation_id}/leave/", **bearer(admin.user)
    )

    assert response.status_code == 204
    assert is_revoked(team["key"])
    assert status_of(team["invitation"]) == Invitation.Status.REVOKED
    assert not is_revoked(team["key_elsewhere"])
    assert not is_revoked(team["owners_key"])
    reasons = set(
        AuditEvent.objects.filter(
            action__in=[AuditAction.API_KEY_REVOKED, AuditAction.INVITATION_REVOKED]
        ).values_list("metadata__reason", flat=True)
    )
    assert reasons == {"member_left"}


def test_deactivating_oneself_revokes_ones_keys_and_invitations_everywhere(api_client, team):
    admin = team["admin"]
    # The admin's own organisation has no other member: they may deactivate.

    response = api_client.post(
        "/api/v1/me/deactivate/",
        {"password": DEFAULT_PASSWORD},
        format="json",
        **bearer(admin.user, admin.organisation),
    )

    assert response.status_code == 204
    for key in ("key", "key_elsewhere"):
        assert is_revoked(team[key])
    for invitation in ("invitation", "invitation_elsewhere"):
        assert status_of(team[invitation]) == Invitation.Status.REVOKED
    assert not is_revoked(team["owners_key"])
    assert status_of(team["accepted"]) == Invitation.Status.ACCEPTED
    events = AuditEvent.objects.filter(action=AuditAction.API_KEY_REVOKED)
    assert {e.organisation_id for e in events} == {
        team["key"].organisation_id,
        team["key_elsewhere"].organisation_id,
    }
    assert {e.metadata["reason"] for e in events} == {"user_deactivated"}


def test_an_operators_deactivation_revokes_them_too(admin_client, api_client, team):
    response = admin_client.post(
        "/admin/accounts/user/",
        {"action": "deactivate_users", "_selected_action": [team["admin"].user.pk]},
    )

    assert response.status_code == 302
    assert is_revoked(team["key"])
    assert is_revoked(team["key_elsewhere"])
    assert status_of(team["invitation"]) == Invitation.Status.REVOKED
    event = AuditEvent.objects.filter(action=AuditAction.API_KEY_REVOKED).first()
    assert event.actor.is_superuser
    assert team["key"].revoked_by == event.actor


def test_deleting_a_user_in_the_admin_revokes_their_grants_first(admin_client, team):
    user = team["admin"].user

    response = admin_client.post(f"/admin/accounts/user/{user.pk}/delete/", {"post": "yes"})
    bulk_target = team["owner"].user
    bulk = admin_client.post(
        "/admin/accounts/user/",
        {"action": "delete_selected", "_selected_action": [bulk_target.pk], "post": "yes"},
    )

    assert response.status_code == bulk.status_code == 302
    assert is_revoked(team["key"]) and is_revoked(team["key_elsewhere"])
    assert status_of(team["invitation"]) == Invitation.Status.REVOKED
    assert is_revoked(team["owners_key"])
    assert status_of(team["owners_invitation"]) == Invitation.Status.REVOKED
    reasons = set(
        AuditEvent.objects.filter(action=AuditAction.API_KEY_REVOKED).values_list(
            "metadata__reason", flat=True
        )
    )
    assert reasons == {"user_deleted"}
