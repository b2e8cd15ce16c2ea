"""Helpers shared by the accounts services: links, emails after commit, token revocation."""

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

from .. import principals
from ..models import Membership, Organisation, Role, User


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
