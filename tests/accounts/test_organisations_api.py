"""Profile, organisations, organisation selection, members and their roles."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Membership, Organisation, Role, User
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import DEFAULT_PASSWORD, MembershipFactory, bearer, member, tokens_for


# ---- Profile ----------------------------------------------------------------------------------
def test_me_shows_the_profile_and_every_organisation_with_its_role(api_client, db):
    owner = member(Role.OWNER)
    MembershipFactory(user=owner.user, role=Role.VIEWER)

    response = api_client.get("/api/v1/me/", **bearer(owner.user))

    body = response.json()
    assert response.status_code == 200
    assert body["id"] == str(owner.user.public_id)
    assert body["email"] == owner.user.email
    assert sorted(o["role"] for o in body["organisations"]) == ["owner", "viewer"]
    assert "password" not in response.content.decode()
    assert "token_version" not in body


def test_me_is_cheap(api_client, db):
    user = member(Role.OWNER).user
    for _ in range(5):
        MembershipFactory(user=user)
    headers = bearer(user)

    with CaptureQueriesContext(connection) as queries:
        response = api_client.get("/api/v1/me/", **headers)

    assert response.status_code == 200
    assert len(queries) <= 2  # the user (authentication), then memberships with organisations


def test_the_organisation_list_is_cheap(api_client, db):
    user = member(Role.OWNER).user
    for _ in range(5):
        MembershipFactory(user=user)
    headers = bearer(user)

    with CaptureQueriesContext(connection) as cold:
        response = api_client.get("/api/v1/organisations/", **headers)
    with CaptureQueriesContext(connection) as warm:
        again = api_client.get("/api/v1/organisations/", **headers)

    assert response.json()["count"] == 6
    assert again.json() == response.json()
    # First request: user + memberships (then cached), count, page; then count and page only.
    assert len(cold) <= 4
    assert len(warm) <= 2


def test_the_profile_update_changes_only_the_name(api_client, db):
    user = member(Role.MEMBER).user

    response = api_client.patch(
        "/api/v1/me/", {"full_name": "Ada L."}, format="json", **bearer(user)
    )

    assert response.status_code == 200
    user.refresh_from_db()
    assert user.full_name == "Ada L."


@pytest.mark.parametrize(
    "field",
    [
        {"is_staff": True},
        {"is_superuser": True},
        {"email": "new@example.com"},
        {"email_verified_at": None},
        {"token_version": 0},
        {"organisation": "00000000-0000-0000-0000-000000000000"},
        {"role": "owner"},
        {"password": "x"},
    ],
)
def test_the_profile_refuses_mass_assignment(api_client, db, field):
    user = member(Role.MEMBER).user
    before = User.objects.filter(pk=user.pk).values().get()

    response = api_client.patch(
        "/api/v1/me/", {"full_name": "X", **field}, format="json", **bearer(user)
    )

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == list(field)
    assert User.objects.filter(pk=user.pk).values().get() == before


def test_api_keys_cannot_use_personal_endpoints(api_client, db):
    from tests.factories import ApiKeyFactory, api_key_header

    key = ApiKeyFactory(organisation=member(Role.OWNER).organisation)

    response = api_client.get("/api/v1/me/", **api_key_header(key))

    assert response.status_code == 403


def test_personal_endpoints_need_credentials(api_client, db):
    assert api_client.get("/api/v1/me/").status_code == 401
    assert api_client.get("/api/v1/organisations/").status_code == 401
    assert api_client.get("/api/v1/members/").status_code == 401


def test_a_sole_owner_with_members_cannot_deactivate(api_client, db):
    owner = member(Role.OWNER)
    member(Role.MEMBER, organisation=owner.organisation)

    response = api_client.post(
        "/api/v1/me/deactivate/",
        {"password": DEFAULT_PASSWORD},
        format="json",
        **bearer(owner.user),
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "sole_owner"
    owner.user.refresh_from_db()
    assert owner.user.is_active


def test_deactivation_needs_the_password(api_client, db):
    user = member(Role.MEMBER).user

    response = api_client.post(
        "/api/v1/me/deactivate/", {"password": "wrong"}, format="json", **bearer(user)
    )

    assert response.status_code == 400
    user.refresh_from_db()
    assert user.is_active


@override_settings(LOGIN_RATE_PER_ACCOUNT="3/15m", LOGIN_RATE_PER_IP="100/15m")
def test_deactivation_password_guesses_count_against_the_sign_in_guard(api_client, db):
    """A stolen access token must not give unlimited guesses at the password."""
    user = member(Role.MEMBER).user

    wrong = [
        api_client.post(
            "/api/v1/me/deactivate/", {"password": "wrong"}, format="json", **bearer(user)
        ).status_code
        for _ in range(3)
    ]
    right = api_client.post(
        "/api/v1/me/deactivate/", {"password": DEFAULT_PASSWORD}, format="json", **bearer(user)
    )

    assert wrong == [400, 400, 400]
    assert right.status_code == 429
    user.refresh_from_db()
    assert user.is_active


# ---- Organisations ----------------------------------------------------------------------------
@override_settings(ORGANISATIONS_PER_USER_MAX=2)
def test_an_account_owns_at_most_organisations_per_user_max(api_client, db):
    """Each organisation starts with a fresh free quota: unlimited ones would be free minutes."""
    user = member(Role.OWNER).user  # owns one already

    second = api_client.post("/api/v1/organisations/", {"name": "B"}, format="json", **bearer(user))
    third = api_client.post("/api/v1/organisations/", {"name": "C"}, format="json", **bearer(user))

    assert second.status_code == 201
    assert third.status_code == 409
    assert third.json()["error"]["code"] == "organisation_limit"
    assert Membership.objects.filter(user=user, role=Role.OWNER).count() == 2


def test_creating_an_organisation_makes_the_caller_its_owner(api_client, db):
    user = member(Role.MEMBER).user

    response = api_client.post(
        "/api/v1/organisations/", {"name": "Second"}, format="json", **bearer(user)
    )

    assert response.status_code == 201
    assert response.json()["role"] == "owner"
    assert response.json()["plan"] == "free"
    organisation = Organisation.objects.get(id=response.json()["id"])
    assert Membership.objects.get(user=user, organisation=organisation).role == Role.OWNER


@pytest.mark.parametrize("extra", [{"plan": "enterprise"}, {"is_active": False}, {"id": "x"}])
def test_organisation_creation_refuses_mass_assignment(api_client, db, extra):
    user = member(Role.MEMBER).user

    response = api_client.post(
        "/api/v1/organisations/", {"name": "Second", **extra}, format="json", **bearer(user)
    )

    assert response.status_code == 400
    assert Organisation.objects.count() == 1


@pytest.mark.parametrize(("role", "status"), [("owner", 200), ("admin", 200), ("member", 403)])
def test_only_admins_rename_an_organisation(api_client, db, role, status):
    membership = member(role)

    response = api_client.patch(
        f"/api/v1/organisations/{membership.organisation.id}/",
        {"name": "Renamed"},
        format="json",
        **bearer(membership.user),
    )

    assert response.status_code == status
    membership.organisation.refresh_from_db()
    assert (membership.organisation.name == "Renamed") is (status == 200)


def test_leaving_an_organisation(api_client, db):
    owner = member(Role.OWNER)
    leaver = member(Role.MEMBER, organisation=owner.organisation)

    response = api_client.post(
        f"/api/v1/organisations/{owner.organisation.id}/leave/", **bearer(leaver.user)
    )

    assert response.status_code == 204
    assert not Membership.objects.filter(pk=leaver.pk).exists()
    assert AuditEvent.objects.filter(action=AuditAction.MEMBER_LEFT).count() == 1


def test_the_last_owner_cannot_leave(api_client, db):
    owner = member(Role.OWNER)

    response = api_client.post(
        f"/api/v1/organisations/{owner.organisation.id}/leave/", **bearer(owner.user)
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_owner"


# ---- Choosing the organisation ----------------------------------------------------------------
def test_a_single_organisation_is_chosen_by_default(api_client, db):
    membership = member(Role.MEMBER)

    response = api_client.get("/api/v1/members/", **bearer(membership.user))

    assert response.status_code == 200
    assert response.json()["results"][0]["id"] == str(membership.id)


def test_several_organisations_need_a_choice(api_client, db):
    first = member(Role.MEMBER)
    second = MembershipFactory(user=first.user)

    ambiguous = api_client.get("/api/v1/members/", **bearer(first.user))
    by_header = api_client.get(
        "/api/v1/members/", HTTP_X_ORGANISATION=str(second.organisation_id), **bearer(first.user)
    )
    by_claim = api_client.get("/api/v1/members/", **bearer(first.user, first.organisation))

    assert ambiguous.status_code == 400
    assert ambiguous.json()["error"]["code"] == "organisation_required"
    assert [m["id"] for m in by_header.json()["results"]] == [str(second.id)]
    assert [m["id"] for m in by_claim.json()["results"]] == [str(first.id)]


def test_the_header_wins_over_the_token_claim(api_client, db):
    first = member(Role.MEMBER)
    second = MembershipFactory(user=first.user)

    response = api_client.get(
        "/api/v1/members/",
        HTTP_X_ORGANISATION=str(second.organisation_id),
        **bearer(first.user, first.organisation),
    )

    assert [m["id"] for m in response.json()["results"]] == [str(second.id)]


@pytest.mark.parametrize("value", ["not-a-uuid", "1", "' OR 1=1 --"])
def test_a_malformed_organisation_header_is_a_400(api_client, db, value):
    user = member(Role.MEMBER).user

    response = api_client.get("/api/v1/members/", HTTP_X_ORGANISATION=value, **bearer(user))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_organisation"


def test_a_deactivated_organisation_refuses_its_members(api_client, db):
    membership = member(Role.OWNER)
    membership.organisation.is_active = False
    membership.organisation.save()

    response = api_client.get("/api/v1/members/", **bearer(membership.user))

    assert response.status_code == 403


# ---- Members ----------------------------------------------------------------------------------
def test_members_list_and_filter_by_role(api_client, db):
    owner = member(Role.OWNER)
    viewer = member(Role.VIEWER, organisation=owner.organisation)

    everyone = api_client.get("/api/v1/members/", **bearer(owner.user))
    viewers = api_client.get("/api/v1/members/", {"role": "viewer"}, **bearer(owner.user))
    bad = api_client.get("/api/v1/members/", {"role": "emperor"}, **bearer(owner.user))

    assert everyone.json()["count"] == 2
    assert [m["id"] for m in viewers.json()["results"]] == [str(viewer.id)]
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("actor_role", "target_role", "new_role", "status"),
    [
        (Role.OWNER, Role.MEMBER, Role.ADMIN, 200),
        (Role.OWNER, Role.MEMBER, Role.OWNER, 200),
        (Role.ADMIN, Role.MEMBER, Role.VIEWER, 200),
        (Role.ADMIN, Role.VIEWER, Role.ADMIN, 200),
        (Role.ADMIN, Role.MEMBER, Role.OWNER, 403),
        (Role.ADMIN, Role.OWNER, Role.MEMBER, 403),
        (Role.MEMBER, Role.VIEWER, Role.MEMBER, 403),
        (Role.VIEWER, Role.MEMBER, Role.VIEWER, 403),
    ],
)
def test_role_changes_follow_the_role_rules(
    api_client, db, actor_role, target_role, new_role, status
):
    owner = member(Role.OWNER)
    actor = (
        owner if actor_role == Role.OWNER else member(actor_role, organisation=owner.organisation)
    )
    target = member(target_role, organisation=owner.organisation)

    response = api_client.patch(
        f"/api/v1/members/{target.id}/", {"role": new_role}, format="json", **bearer(actor.user)
    )

    assert response.status_code == status
    target.refresh_from_db()
    assert target.role == (new_role if status == 200 else target_role)
    changes = AuditEvent.objects.filter(action=AuditAction.MEMBER_ROLE_CHANGED)
    assert changes.count() == (1 if status == 200 else 0)
    if status == 200:
        assert changes.get().metadata == {
            "from": target_role,
            "to": new_role,
            "membership": str(target.id),
        }


def test_the_last_owner_cannot_be_demoted(api_client, db):
    owner = member(Role.OWNER)

    response = api_client.patch(
        f"/api/v1/members/{owner.id}/", {"role": "admin"}, format="json", **bearer(owner.user)
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_owner"


@pytest.mark.parametrize(
    "body", [{"role": "emperor"}, {"role": "member", "user": "x"}, {"organisation": "x"}, {}]
)
def test_role_change_input_is_validated(api_client, db, body):
    owner = member(Role.OWNER)
    target = member(Role.MEMBER, organisation=owner.organisation)

    response = api_client.patch(
        f"/api/v1/members/{target.id}/", body, format="json", **bearer(owner.user)
    )

    assert response.status_code == 400
    target.refresh_from_db()
    assert target.role == Role.MEMBER


@pytest.mark.parametrize(
    ("actor_role", "target_role", "status"),
    [
        (Role.OWNER, Role.ADMIN, 204),
        (Role.ADMIN, Role.MEMBER, 204),
        (Role.ADMIN, Role.OWNER, 403),
        (Role.MEMBER, Role.VIEWER, 403),
        (Role.VIEWER, Role.MEMBER, 403),
    ],
)
def test_removing_members_follows_the_role_rules(api_client, db, actor_role, target_role, status):
    owner = member(Role.OWNER)
    actor = (
        owner if actor_role == Role.OWNER else member(actor_role, organisation=owner.organisation)
    )
    target = member(target_role, organisation=owner.organisation)

    response = api_client.delete(f"/api/v1/members/{target.id}/", **bearer(actor.user))

    assert response.status_code == status
    assert Membership.objects.filter(pk=target.pk).exists() is (status != 204)


def test_removed_members_lose_access_immediately(api_client, db):
    owner = member(Role.OWNER)
    removed = member(Role.MEMBER, organisation=owner.organisation)
    pair = tokens_for(removed.user)

    api_client.delete(f"/api/v1/members/{removed.id}/", **bearer(owner.user))

    response = api_client.get("/api/v1/members/", HTTP_AUTHORIZATION=f"Bearer {pair.access}")
    assert response.status_code == 401
    assert AuditEvent.objects.get(action=AuditAction.MEMBER_REMOVED).actor == owner.user


def test_a_deactivated_organisation_cannot_be_renamed(api_client, db):
    owner = member(Role.OWNER)
    organisation = owner.organisation
    Organisation.objects.filter(pk=organisation.pk).update(is_active=False)

    response = api_client.patch(
        f"/api/v1/organisations/{organisation.id}/",
        {"name": "Renamed"},
        format="json",
        **bearer(owner.user),
    )

    assert response.status_code == 403
    organisation.refresh_from_db()
    assert organisation.name != "Renamed"
    assert not AuditEvent.objects.filter(action=AuditAction.ORGANISATION_UPDATED).exists()
