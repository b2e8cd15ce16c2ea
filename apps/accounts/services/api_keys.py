"""Organisation API keys: creation (shown once), revocation, last use."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ConflictError

from ..exceptions import Forbidden
from ..models import (
    ApiKey,
    Membership,
    Organisation,
    Role,
    role_at_least,
)
from ..network import RequestMeta
from ..tokens import (
    api_key_new,
)


# ---- API keys ---------------------------------------------------------------------------------
@transaction.atomic
def api_key_create(
    *,
    actor: Membership,
    name: str,
    role: str = Role.MEMBER,
    expires_at: dt.datetime | None = None,
    meta: RequestMeta,
) -> tuple[ApiKey, str]:
    """Create a key; the full key is returned here once and never stored."""
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden("Only admins can create API keys.")
    if role not in (Role.MEMBER, Role.VIEWER):
        raise DjangoValidationError({"role": ["An API key is a member or a viewer."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise DjangoValidationError({"expires_at": ["Choose a time in the future."]})
    # Each key has its own rate windows: a cap keeps an organisation's rate from growing with
    # the number of keys it mints. Revoked and expired keys do not count.
    Organisation.objects.select_for_update().filter(pk=actor.organisation_id).first()
    limit = settings.API_KEYS_PER_ORGANISATION_MAX
    usable = ApiKey.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()),
        organisation_id=actor.organisation_id,
        revoked_at__isnull=True,
    ).count()
    if limit and usable >= limit:
        raise ConflictError(
            f"This organisation has {usable} API keys, the most it may have. Revoke one first.",
            code="api_key_limit",
            details={"limit": limit},
        )
    raw, prefix, key_hash = api_key_new()
    api_key = ApiKey.objects.create(
        organisation=actor.organisation,
        name=name,
        role=role,
        prefix=prefix,
        key_hash=key_hash,
        created_by=actor.user,
        expires_at=expires_at,
    )
    audit_record(
        action=AuditAction.API_KEY_CREATED,
        actor=actor.user,
        organisation=actor.organisation,
        target=api_key,
        meta=meta,
        metadata={"prefix": prefix, "role": role},
    )
    return api_key, raw


@transaction.atomic
def api_key_revoke(*, actor: Membership, api_key: ApiKey, meta: RequestMeta) -> ApiKey:
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden("Only admins can revoke API keys.")
    if api_key.revoked_at is not None:
        return api_key
    api_key.revoked_at = timezone.now()
    api_key.revoked_by = actor.user
    api_key.save(update_fields=["revoked_at", "revoked_by", "updated_at"])
    audit_record(
        action=AuditAction.API_KEY_REVOKED,
        actor=actor.user,
        organisation=actor.organisation,
        target=api_key,
        meta=meta,
        metadata={"prefix": api_key.prefix},
    )
    from apps.audio_jobs.shares import shares_revoke_of

    shares_revoke_of(api_keys=[api_key], actor=actor.user, reason="api_key_revoked", meta=meta)
    return api_key


def api_key_mark_used(*, api_key: ApiKey, meta: RequestMeta) -> None:
    """Stamp `last_used_at` (and record `api_key.used`) at most once per interval per key."""
    now = timezone.now()
    threshold = now - dt.timedelta(seconds=settings.API_KEY_LAST_USED_INTERVAL)
    if api_key.last_used_at is not None and api_key.last_used_at > threshold:
        return
    updated = (
        ApiKey.objects.filter(pk=api_key.pk)
        .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=threshold))
        .update(last_used_at=now)
    )
    api_key.last_used_at = now
    if updated:
        audit_record(
            action=AuditAction.API_KEY_USED,
            api_key=api_key,
            organisation=api_key.organisation,
            target=api_key,
            meta=meta,
            metadata={"prefix": api_key.prefix},
        )
