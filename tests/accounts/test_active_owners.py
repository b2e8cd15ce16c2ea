"""Only active owners count: an organisation with members always keeps one who can sign in.

A deactivated owner's membership stays (an operator may reactivate them), but they cannot manage
anything, so they never count as the owner that lets another owner leave, step down or deactivate.
"""

from __future__ import annotations

import pytest

from apps.accounts import services
from apps.accounts.models import Membership, Role
from apps.accounts.network import RequestMeta
from tests.factories import DEFAULT_PASSWORD, bearer, member


@pytest.fixture
def owners(db):
    """An organisation with an active owner, a deactivated owner and a member."""
    active = member(Role.OWNER)
    organisation = active.organisation
    gone = member(Role.OWNER, organisation=organisation)
    member(Role.MEMBER, organisation=organisation)
    services.user_deactivate(user=gone.user, actor=gone.user, meta=RequestMeta())
    return active, gone


def active_owner_count(organisation) -> int:
    return Membership.objects.filter(
        organisation=organisation, role=Role.OWNER, user__is_active=True
    ).count()


def test_the_last_active_owner_cannot_leave(api_client, owners):
    active, _gone = owners

    response = api_client.post(
        f"/api/v1/organisations/{active.organisation.id}/leave/", **bearer(active.user)
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_owner"
    assert active_owner_count(active.organisation) == 1


def test_the_last_active_owner_cannot_deactivate(api_client, owners):
    active, _gone = owners

    response = api_client.post(
        "/api/v1/me/deactivate/",
        {"password": DEFAULT_PASSWORD},
        format="json",
        **bearer(active.user),
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "sole_owner"
    active.user.refresh_from_db()
    assert active.user.is_active


def test_the_last_active_owner_cannot_step_down(api_client, owners):
    active, _gone = owners

    response = api_client.patch(
        f"/api/v1/members/{active.id}/", {"role": "admin"}, format="json", **bearer(active.user)
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_owner"
    assert active_owner_count(active.organisation) == 1


def test_the_last_active_owner_cannot_remove_themselves(api_client, owners):
    active, _gone = owners

    response = api_client.delete(f"/api/v1/members/{active.id}/", **bearer(active.user))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_owner"


def test_a_deactivated_owner_can_be_removed_or_demoted_by_the_active_one(api_client, owners):
    active, gone = owners

    demoted = api_client.patch(
        f"/api/v1/members/{gone.id}/", {"role": "member"}, format="json", **bearer(active.user)
    )
    removed = api_client.delete(f"/api/v1/members/{gone.id}/", **bearer(active.user))

    assert demoted.status_code == 200
    assert removed.status_code == 204
    assert active_owner_count(active.organisation) == 1


def test_with_two_active_owners_either_may_leave(api_client, owners):
    active, gone = owners
    gone.user.is_active = True
    gone.user.save(update_fields=["is_active"])

    response = api_client.post(
        f"/api/v1/organisations/{active.organisation.id}/leave/", **bearer(active.user)
    )

    assert response.status_code == 204
    assert active_owner_count(active.organisation) == 1
