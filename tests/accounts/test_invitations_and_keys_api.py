"""Invitations by email, and the lifecycle of organisation API keys."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qs, urlparse

import pytest
from django.test import override_settings
from django.utils import timezone

from apps.accounts.models import ApiKey, Invitation, Membership, Role, User
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import (
    ApiKeyFactory,
    InvitationFactory,
    UserFactory,
    api_key_header,
    bearer,
    member,
)

PASSWORD = "Invited-Person-Passphrase-1"


def link_token(message) -> str:
    url = re.search(r"https?://\S+", message.body).group(0)
    return parse_qs(urlparse(url).query)["token"][0]


def accept(client, token, **body):
    return client.post("/api/v1/invitations/accept/", {"token": token, **body}, format="json")


# ---- Invitations ------------------------------------------------------------------------------
def test_an_admin_invites_by_email_and_a_new_person_joins(api_client, db, send_emails, mailoutbox):
    admin = member(Role.ADMIN)

    with send_emails():
        created = api_client.post(
            "/api/v1/invitations/",
            {"email": "Newcomer@Example.com", "role": "viewer"},
            format="json",
            **bearer(admin.user),
        )
    accepted = accept(api_client, link_token(mailoutbox[0]), password=PASSWORD, full_name="New")

    assert created.status_code == 201
    assert created.json()["email"] == "newcomer@example.com"
    assert mailoutbox[0].to == ["newcomer@example.com"]
    assert admin.organisation.name in mailoutbox[0].subject
    assert accepted.status_code == 200
    assert accepted.json()["role"] == "viewer"
    user = User.objects.get(email="newcomer@example.com")
    assert user.email_verified
    assert Membership.objects.get(user=user).organisation == admin.organisation
    me = api_client.get(
        "/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {accepted.json()['tokens']['access']}"
    )
    assert me.status_code == 200
    actions = list(AuditEvent.objects.order_by("occurred_at").values_list("action", flat=True))
    assert AuditAction.INVITATION_SENT in actions
    assert AuditAction.INVITATION_ACCEPTED in actions


def test_a_signed_in_user_accepts_an_invitation_to_their_address(api_client, db):
    user = member(Role.OWNER).user
    invitation = InvitationFactory(email=user.email, role=Role.MEMBER)

    response = api_client.post(
        "/api/v1/invitations/accept/", {"token": invitation.token}, format="json", **bearer(user)
    )

    assert response.status_code == 200
    assert response.json()["tokens"] is None
    assert Membership.objects.filter(user=user, organisation=invitation.organisation).exists()
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.ACCEPTED


def test_an_invitation_for_another_address_is_refused(api_client, db):
    user = member(Role.OWNER).user
    invitation = InvitationFactory(email="someone.else@example.com")

    response = api_client.post(
        "/api/v1/invitations/accept/", {"token": invitation.token}, format="json", **bearer(user)
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invitation_email_mismatch"


def test_an_existing_account_must_sign_in_to_accept(api_client, db):
    user = UserFactory()
    invitation = InvitationFactory(email=user.email)

    response = accept(api_client, invitation.token, password=PASSWORD)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "account_exists"


def test_an_invitation_is_accepted_once(api_client, db):
    invitation = InvitationFactory()
    accept(api_client, invitation.token, password=PASSWORD)

    again = accept(api_client, invitation.token, password=PASSWORD)

    assert again.status_code == 400
    assert again.json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("state", ["expired", "revoked", "tampered", "old_link", "signature_aged"])
def test_dead_invitation_links_are_refused(api_client, db, state):
    invitation = InvitationFactory()
    token = invitation.token
    if state == "expired":
        invitation.expires_at = timezone.now() - timezone.timedelta(minutes=1)
        invitation.save()
    elif state == "revoked":
        invitation.status = Invitation.Status.REVOKED
        invitation.save()
    elif state == "tampered":
        token = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    elif state == "old_link":
        from apps.accounts.services import invitation_resend_by_operator

        invitation_resend_by_operator(invitation=invitation, operator=UserFactory())

    with override_settings(INVITATION_MAX_AGE=-1 if state == "signature_aged" else 3600):
        response = accept(api_client, token, password=PASSWORD)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_token"
    assert not User.objects.filter(email=invitation.email).exists()


@pytest.mark.parametrize(
    ("role", "invited_role", "status"),
    [
        (Role.OWNER, Role.OWNER, 201),
        (Role.ADMIN, Role.ADMIN, 201),
        (Role.ADMIN, Role.OWNER, 403),
        (Role.MEMBER, Role.VIEWER, 403),
        (Role.VIEWER, Role.VIEWER, 403),
    ],
)
def test_who_may_invite_whom(api_client, db, role, invited_role, status):
    inviter = member(role)

    response = api_client.post(
        "/api/v1/invitations/",
        {"email": "x@example.com", "role": invited_role},
        format="json",
        **bearer(inviter.user),
    )

    assert response.status_code == status
    assert Invitation.objects.exists() is (status == 201)


def test_inviting_a_member_or_a_pending_address_conflicts(api_client, db):
    admin = member(Role.ADMIN)
    existing = member(Role.MEMBER, organisation=admin.organisation)
    InvitationFactory(organisation=admin.organisation, email="pending@example.com")

    again = api_client.post(
        "/api/v1/invitations/",
        {"email": "PENDING@example.com"},
        format="json",
        **bearer(admin.user),
    )
    already = api_client.post(
        "/api/v1/invitations/", {"email": existing.user.email}, format="json", **bearer(admin.user)
    )

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_invited"
    assert already.status_code == 409
    assert already.json()["error"]["code"] == "already_member"


def test_resend_sends_a_fresh_link_and_revoke_kills_it(api_client, db, send_emails, mailoutbox):
    admin = member(Role.ADMIN)
    invitation = InvitationFactory(organisation=admin.organisation)

    with send_emails():
        resent = api_client.post(
            f"/api/v1/invitations/{invitation.id}/resend/", **bearer(admin.user)
        )
    revoked = api_client.delete(f"/api/v1/invitations/{invitation.id}/", **bearer(admin.user))

    assert resent.status_code == 200
    assert resent.json()["sent_count"] == 2
    assert len(mailoutbox) == 1
    assert revoked.status_code == 204
    assert accept(api_client, link_token(mailoutbox[0]), password=PASSWORD).status_code == 400


def test_admins_list_invitations_and_members_cannot(api_client, db):
    admin = member(Role.ADMIN)
    plain = member(Role.MEMBER, organisation=admin.organisation)
    InvitationFactory(organisation=admin.organisation)

    listed = api_client.get("/api/v1/invitations/", {"status": "pending"}, **bearer(admin.user))
    refused = api_client.get("/api/v1/invitations/", **bearer(plain.user))

    assert listed.json()["count"] == 1
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_role"


@pytest.mark.parametrize("body", [{"email": "bad"}, {"email": "a@b.co", "role": "god"}, {}])
def test_invitation_input_is_validated(api_client, db, body):
    admin = member(Role.ADMIN)

    response = api_client.post("/api/v1/invitations/", body, format="json", **bearer(admin.user))

    assert response.status_code == 400


# ---- API keys ---------------------------------------------------------------------------------
@override_settings(API_KEYS_PER_ORGANISATION_MAX=2)
def test_an_organisation_has_at_most_api_keys_per_organisation_max_usable_keys(api_client, db):
    """Each key has its own rate windows: a cap bounds the organisation's total rate."""
    admin = member(Role.ADMIN)

    def create(name):
        return api_client.post(
            "/api/v1/api-keys/",
            {"name": name, "role": "member"},
            format="json",
            **bearer(admin.user),
        )

    first, second, third = create("a"), create("b"), create("c")
    api_client.delete(f"/api/v1/api-keys/{first.json()['id']}/", **bearer(admin.user))
    after_revoking = create("d")

    assert [first.status_code, second.status_code] == [201, 201]
    assert third.status_code == 409
    assert third.json()["error"]["code"] == "api_key_limit"
    assert after_revoking.status_code == 201


def test_an_api_key_is_shown_once_and_stored_hashed(api_client, db):
    admin = member(Role.ADMIN)

    created = api_client.post(
        "/api/v1/api-keys/", {"name": "CI", "role": "viewer"}, format="json", **bearer(admin.user)
    )
    shown = api_client.get(f"/api/v1/api-keys/{created.json()['id']}/", **bearer(admin.user))
    listed = api_client.get("/api/v1/api-keys/", **bearer(admin.user))

    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith(f"lxk_{created.json()['prefix']}_")
    assert len(key) > 50
    stored = ApiKey.objects.get()
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(ApiKey.objects.values().get())
    assert "key" not in shown.json()
    assert key not in listed.content.decode()
    event = AuditEvent.objects.get(action=AuditAction.API_KEY_CREATED)
    assert event.metadata == {"prefix": stored.prefix, "role": "viewer"}


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_an_api_key_authenticates_for_its_organisation(api_client, db, header):
    owner = member(Role.OWNER)
    api_key = ApiKeyFactory(organisation=owner.organisation, role=Role.VIEWER)
    headers = (
        api_key_header(api_key)
        if header == "authorization"
        else {"HTTP_X_API_KEY": api_key.raw_key}
    )

    response = api_client.get("/api/v1/members/", **headers)

    assert response.status_code == 200
    assert [m["id"] for m in response.json()["results"]] == [str(owner.id)]
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
    used = AuditEvent.objects.get(action=AuditAction.API_KEY_USED)
    assert used.api_key_id == api_key.id
    assert used.actor_type == "api_key"
    assert used.request_id == response["X-Request-ID"]


def test_last_use_is_recorded_at_most_once_per_interval(api_client, db):
    api_key = ApiKeyFactory(organisation=member(Role.OWNER).organisation)

    for _ in range(3):
        api_client.get("/api/v1/members/", **api_key_header(api_key))

    assert AuditEvent.objects.filter(action=AuditAction.API_KEY_USED).count() == 1


@pytest.mark.parametrize("state", ["revoked", "expired", "wrong_secret", "malformed", "org_off"])
def test_dead_or_wrong_api_keys_get_401(api_client, db, state):
    api_key = ApiKeyFactory(organisation=member(Role.OWNER).organisation)
    raw = api_key.raw_key
    if state == "revoked":
        ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    elif state == "expired":
        ApiKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now())
    elif state == "wrong_secret":
        raw = raw[:-4] + "abcd"
    elif state == "malformed":
        raw = "lxk_short"
    elif state == "org_off":
        api_key.organisation.is_active = False
        api_key.organisation.save()

    response = api_client.get("/api/v1/members/", HTTP_AUTHORIZATION=f"Api-Key {raw}")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_key_stops_working_at_once(api_client, db):
    admin = member(Role.ADMIN)
    api_key = ApiKeyFactory(organisation=admin.organisation)
    assert api_client.get("/api/v1/members/", **api_key_header(api_key)).status_code == 200

    revoked = api_client.delete(f"/api/v1/api-keys/{api_key.id}/", **bearer(admin.user))

    assert revoked.status_code == 204
    assert api_client.get("/api/v1/members/", **api_key_header(api_key)).status_code == 401
    assert AuditEvent.objects.filter(action=AuditAction.API_KEY_REVOKED).count() == 1


def test_api_keys_cannot_manage_members_or_keys(api_client, db):
    owner = member(Role.OWNER)
    api_key = ApiKeyFactory(organisation=owner.organisation, role=Role.MEMBER)
    headers = api_key_header(api_key)

    responses = [
        api_client.get("/api/v1/api-keys/", **headers),
        api_client.post("/api/v1/api-keys/", {"name": "x"}, format="json", **headers),
        api_client.post("/api/v1/invitations/", {"email": "a@b.co"}, format="json", **headers),
        api_client.patch(
            f"/api/v1/members/{owner.id}/", {"role": "viewer"}, format="json", **headers
        ),
        api_client.delete(f"/api/v1/members/{owner.id}/", **headers),
        api_client.get("/api/v1/audit-events/", **headers),
    ]

    assert [r.status_code for r in responses] == [403] * 6


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_members_and_viewers_cannot_manage_keys(api_client, db, role):
    someone = member(role)

    response = api_client.post(
        "/api/v1/api-keys/", {"name": "x"}, format="json", **bearer(someone.user)
    )

    assert response.status_code == 403
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "admin"},
        {"name": "x", "role": "owner"},
        {"name": "x", "expires_at": "2000-01-01T00:00:00Z"},
        {"name": "x", "organisation": "00000000-0000-0000-0000-000000000000"},
        {"name": "x", "prefix": "chosen"},
        {"name": ""},
    ],
)
def test_api_key_input_is_validated(api_client, db, body):
    admin = member(Role.ADMIN)

    response = api_client.post("/api/v1/api-keys/", body, format="json", **bearer(admin.user))

    assert response.status_code == 400
    assert not ApiKey.objects.exists()


def test_keys_with_an_expiry_work_until_it(api_client, db):
    admin = member(Role.ADMIN)
    expires = (timezone.now() + timezone.timedelta(days=1)).isoformat()

    created = api_client.post(
        "/api/v1/api-keys/",
        {"name": "t", "expires_at": expires},
        format="json",
        **bearer(admin.user),
    )

    headers = {"HTTP_X_API_KEY": created.json()["key"]}
    assert api_client.get("/api/v1/members/", **headers).status_code == 200
    active = api_client.get("/api/v1/api-keys/", {"active": "true"}, **bearer(admin.user))
    assert active.json()["count"] == 1


def test_the_active_filter_matches_the_keys_active_field(api_client, db):
    """`active` in the list is `is_usable` (not revoked, not expired): the filter must agree, both
    ways, or an expired key is listed as active=false under ?active=true."""
    admin = member(Role.ADMIN)
    organisation = admin.organisation
    now = timezone.now()
    keys = {
        "forever": ApiKeyFactory(organisation=organisation),
        "until_tomorrow": ApiKeyFactory(
            organisation=organisation, expires_at=now + timezone.timedelta(days=1)
        ),
        "expired": ApiKeyFactory(
            organisation=organisation, expires_at=now - timezone.timedelta(seconds=1)
        ),
        "revoked": ApiKeyFactory(organisation=organisation, revoked_at=now),
        "revoked_and_expired": ApiKeyFactory(
            organisation=organisation, revoked_at=now, expires_at=now - timezone.timedelta(days=1)
        ),
    }
    names = {str(key.id): name for name, key in keys.items()}

    def listed(**params):
        response = api_client.get("/api/v1/api-keys/", params, **bearer(admin.user))
        assert response.status_code == 200
        return {names[k["id"]]: k["active"] for k in response.json()["results"]}

    assert listed(active="true") == {"forever": True, "until_tomorrow": True}
    assert listed(active="false") == {
        "expired": False,
        "revoked": False,
        "revoked_and_expired": False,
    }
    assert len(listed()) == 5
