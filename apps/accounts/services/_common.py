"""Helpers shared by the accounts services: links, emails after commit, token revocation, what a
departing member leaves behind."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import F
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.audit.models import AuditAction
from apps.audit.services import audit_record

from .. import principals
from ..models import ApiKey, Invitation, Membership, Organisation, Role, User
from ..network import RequestMeta


def public_link(path: str, token: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}{path}?{urlencode({'token': token})}"


def enqueue_email(
    template: str, to: str, context: dict[str, Any], dedupe_key: str | None = None
) -> None:
    """Send a templated email through the outbox: written in the caller's transaction, published
    once it commits, and sent by beat's sweep if the broker is down then."""
    from apps.notifications.services import email_enqueue

    email_enqueue(template=template, to=[to], context=context, dedupe_key=dedupe_key or "")


def check_password_strength(password: str, user: User) -> None:
    try:
        validate_password(password, user=user)
    except DjangoValidationError as exc:
        raise DjangoValidationError({"password": exc.messages}) from None


def blacklist_refresh_tokens(user: User) -> int:
    """Blacklist every unexpired refresh token of the user that is not blacklisted yet."""
    pending = OutstandingToken.objects.filter(
        user=user, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True
    )
    created = BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token=token) for token in pending], ignore_conflicts=True
    )
    return len(created)


def user_tokens_revoke(*, user: User) -> User:
    """End every session of the user: access tokens by version, refresh tokens by blacklist."""
    User.objects.filter(pk=user.pk).update(token_version=F("token_version") + 1)
    principals.invalidate_users([user.public_id])  # update() sends no signal
    user.refresh_from_db(fields=["token_version"])
    blacklist_refresh_tokens(user)
    return user


def default_organisation(user: User) -> Organisation | None:
    memberships = list(
        Membership.objects.filter(user=user).select_related("organisation").order_by()[:2]
    )
    return memberships[0].organisation if len(memberships) == 1 else None


def active_owners_locked(organisation_id: uuid.UUID) -> set[int]:
    """Lock every owner membership of the organisation; return the user ids of the active ones.

    A deactivated owner cannot sign in, so only active owners keep an organisation managed. Every
    change that could leave it without one (demoting, removing or losing an owner, deactivating
    one) takes these row locks first, in one order, so two such changes wait for each other. The
    users are read after the lock, in a statement of their own: under READ COMMITTED it sees a
    deactivation that committed while this transaction waited (a join locked with the rows would
    re-check only the rows it locks).
    """
    owner_ids = list(
        Membership.objects.select_for_update()
        .filter(organisation_id=organisation_id, role=Role.OWNER)
        .order_by("id")
        .values_list("user_id", flat=True)
    )
    return set(User.objects.filter(pk__in=owner_ids, is_active=True).values_list("pk", flat=True))


def departed_member_grants_revoke(
    *,
    user: User,
    organisation_id: uuid.UUID | None,
    actor: User | None,
    reason: str,
    meta: RequestMeta,
) -> tuple[int, int]:
    """Revoke the pending invitations `user` sent and the API keys they created, in one
    organisation (they were removed or left it) or in all (their account was deactivated).

    Both outlive their author otherwise: a removed admin could still read and write the
    organisation's data with a key they made, or come back through an invitation they sent to an
    address of their own. Each revocation is recorded (actor: who removed them, themselves, or
    "system"; `metadata.reason` says why). Returns (invitations revoked, keys revoked).
    """
    invitations = Invitation.objects.select_for_update(of=("self",)).filter(
        invited_by=user, status=Invitation.Status.PENDING
    )
    api_keys = ApiKey.objects.select_for_update(of=("self",)).filter(
        created_by=user, revoked_at__isnull=True
    )
    if organisation_id is not None:
        invitations = invitations.filter(organisation_id=organisation_id)
        api_keys = api_keys.filter(organisation_id=organisation_id)
    who = actor if actor is not None else "system"
    author = {"reason": reason, "author": str(user.public_id)}
    revoked_invitations = list(invitations.select_related("organisation").order_by("id"))
    for invitation in revoked_invitations:
        invitation.status = Invitation.Status.REVOKED
        invitation.save(update_fields=["status", "updated_at"])
        audit_record(
            action=AuditAction.INVITATION_REVOKED,
            actor=who,
            organisation=invitation.organisation,
            target=invitation,
            target_repr=invitation.email,
            meta=meta,
            metadata=author,
        )
    revoked_keys = list(api_keys.select_related("organisation").order_by("id"))
    for api_key in revoked_keys:
        api_key.revoked_at = timezone.now()
        api_key.revoked_by = actor
        api_key.save(update_fields=["revoked_at", "revoked_by", "updated_at"])
        audit_record(
            action=AuditAction.API_KEY_REVOKED,
            actor=who,
            organisation=api_key.organisation,
            target=api_key,
            meta=meta,
            metadata={"prefix": api_key.prefix, **author},
        )
    from apps.audio_jobs.shares import shares_revoke_of

    # Their share links, and those their keys made: none outlives their access.
    for owner in ({"user": user}, {"api_keys": revoked_keys}):
        shares_revoke_of(
            **owner, organisation_id=organisation_id, actor=who, reason=reason, meta=meta
        )
    return len(revoked_invitations), len(revoked_keys)
