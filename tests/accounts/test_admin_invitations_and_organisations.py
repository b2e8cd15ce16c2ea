"""Admin pages of invitations and organisations: a pending invitation's link cannot be re-aimed,
and an organisation's page costs the same few queries however many members it has."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Invitation, Organisation, Role
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import InvitationFactory, member


# ---- Invitations ------------------------------------------------------------------------------
def test_a_pending_invitations_address_role_and_organisation_cannot_be_changed(admin_client, db):
    invitation = InvitationFactory(email="invitee@example.com", role=Role.MEMBER)
    other = Organisation.objects.create(name="Other")
    url = f"/admin/accounts/invitation/{invitation.pk}/change/"

    form = admin_client.get(url)
    posted = admin_client.post(
        url, {"email": "attacker@example.com", "role": "owner", "organisation": str(other.pk)}
    )

    body = form.content.decode()
    assert form.status_code == 200
    for field in ("email", "role", "organisation"):
        assert f'name="{field}"' not in body, field
    assert "invitee@example.com" in body  # shown, read-only
    assert posted.status_code == 302
    invitation.refresh_from_db()
    assert (invitation.email, invitation.role, invitation.organisation_id) == (
        "invitee@example.com",
        Role.MEMBER,
        invitation.organisation_id,
    )
    assert invitation.organisation_id != other.pk


def test_the_change_page_lists_no_organisations(admin_client, db):
    invitation = InvitationFactory()
    for n in range(30):
        Organisation.objects.create(name=f"Organisation {n}")

    response = admin_client.get(f"/admin/accounts/invitation/{invitation.pk}/change/")

    assert response.status_code == 200
    assert response.content.decode().count("<option") == 0


def test_operators_revoke_invitations_from_the_list(admin_client, api_client, db):
    pending = InvitationFactory()
    accepted = InvitationFactory(status=Invitation.Status.ACCEPTED)

    response = admin_client.post(
        "/admin/accounts/invitation/",
        {"action": "revoke_invitations", "_selected_action": [pending.pk, accepted.pk]},
    )

    assert response.status_code == 302
    pending.refresh_from_db()
    accepted.refresh_from_db()
    assert pending.status == Invitation.Status.REVOKED
    assert accepted.status == Invitation.Status.ACCEPTED
    link = api_client.post(
        "/api/v1/invitations/accept/",
        {"token": pending.token, "password": "Another-long-passphrase-1"},
        format="json",
    )
    assert link.status_code == 400
    event = AuditEvent.objects.get(action=AuditAction.INVITATION_REVOKED)
    assert event.actor.is_superuser
    assert event.target_id == str(pending.pk)


# ---- Organisations ----------------------------------------------------------------------------
def organisation_page_queries(client, organisation) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/admin/accounts/organisation/{organisation.pk}/change/")
    assert response.status_code == 200
    return len(queries), response.content.decode()


@pytest.fixture
def organisations(db):
    small = member(Role.OWNER).organisation
    large = member(Role.OWNER).organisation
    for _ in range(60):
        member(Role.MEMBER, organisation=large)
    return small, large


def test_an_organisations_page_costs_the_same_whatever_its_size(admin_client, organisations):
    small, large = organisations

    small_queries, _ = organisation_page_queries(admin_client, small)
    large_queries, body = organisation_page_queries(admin_client, large)

    assert large_queries == small_queries
    assert large_queries <= 10
    assert "61 member(s)" in body


def test_the_organisations_members_are_one_link_away(admin_client, organisations):
    small, large = organisations
    _, body = organisation_page_queries(admin_client, large)
    link = f"/admin/accounts/membership/?organisation={large.pk}"

    listed = admin_client.get(link)

    assert f'href="{link}"' in body
    assert listed.status_code == 200
    assert "61 memberships" in listed.content.decode()
    outsider = small.memberships.get().user.email
    assert outsider not in listed.content.decode()
