"""Sign-in, token refresh with reuse detection, sign-out, token housekeeping."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError

from ..exceptions import InvalidCredentials, InvalidToken
from ..models import (
    Membership,
    Organisation,
    User,
    normalise_email,
)
from ..network import RequestMeta
from ..ratelimit import guard_attempt, guard_hit
from ..tokens import (
    ORGANISATION_CLAIM,
    VERSION_CLAIM,
    LexisRefreshToken,
    TokenPair,
    TokenReusedError,
    token_pair_issue,
)
from ._common import (
    default_organisation,
    user_tokens_revoke,
)


def _looks_like_an_address(value: str) -> bool:
    try:
        validate_email(value)
    except DjangoValidationError:
        return False
    return True


# ---- Sign-in, refresh, sign-out ---------------------------------------------------------------
def auth_login(
    *,
    email: str,
    password: str,
    organisation_id: uuid.UUID | None = None,
    meta: RequestMeta,
) -> TokenPair:
    """Check the credentials (behind the brute-force guard) and issue a token pair."""
    account = normalise_email(email)
    with guard_attempt(guard="login", account=account, ip=meta.ip):
        user = authenticate(None, email=account, password=password)
        exhausted = (
            guard_hit(guard="login", account=account, ip=meta.ip)
            if user is None or not isinstance(user, User)
            else []
        )
    if user is None or not isinstance(user, User):
        # What was typed as the address goes into the append-only trail only if it is one: a
        # password typed into the wrong field must not be kept for ever.
        shown = account if _looks_like_an_address(account) else "(not an email address)"
        audit_record(
            action=AuditAction.LOGIN_FAILED, meta=meta, target_type="account", target_repr=shown
        )
        if exhausted:  # recorded once, when the lockout starts, not for every refused attempt
            audit_record(
                action=AuditAction.LOGIN_LOCKED,
                meta=meta,
                target_type="account",
                target_repr=shown,
                metadata={"counters": exhausted},
            )
        raise InvalidCredentials()
    if not user.email_verified:
        raise ApplicationError(
            "Confirm your email address first: we sent you a link.",
            code="email_not_verified",
            status_code=403,
        )
    organisation = None
    if organisation_id is not None:
        membership = (
            Membership.objects.select_related("organisation")
            .filter(user=user, organisation_id=organisation_id)
            .first()
        )
        if membership is None:
            raise DjangoValidationError({"organisation": ["You are not a member of it."]})
        organisation = membership.organisation
    pair = token_pair_issue(user=user, organisation=organisation)
    User.objects.filter(pk=user.pk).update(last_login=timezone.now())
    audit_record(
        action=AuditAction.LOGIN_SUCCEEDED,
        actor=user,
        organisation=organisation or default_organisation(user),
        target=user,
        meta=meta,
    )
    return pair


def _refresh_reused(*, payload: dict[str, Any], meta: RequestMeta) -> None:
    user = User.objects.filter(
        **{jwt_settings.USER_ID_FIELD: payload.get(jwt_settings.USER_ID_CLAIM)}
    ).first()
    if user is not None and payload.get(VERSION_CLAIM) != user.token_version:
        # Blacklisted by a revocation (password change, deactivation, ...), not by rotation:
        # another device of the user catching up, not a replay.
        return
    revoked = bool(user and settings.JWT_REVOKE_ON_REFRESH_REUSE)
    if user is not None and revoked:
        user_tokens_revoke(user=user)
    audit_record(
        action=AuditAction.REFRESH_REUSED,
        actor=user,
        organisation=default_organisation(user) if user else None,
        target=user,
        meta=meta,
        metadata={"jti": str(payload.get(jwt_settings.JTI_CLAIM)), "sessions_revoked": revoked},
    )


def _refresh_user(payload: dict[str, Any]) -> User:
    try:
        user = User.objects.get(
            **{jwt_settings.USER_ID_FIELD: payload.get(jwt_settings.USER_ID_CLAIM)}
        )
    except (User.DoesNotExist, DjangoValidationError, ValueError):
        raise InvalidToken() from None
    if not user.is_active or payload.get(VERSION_CLAIM) != user.token_version:
        raise InvalidToken()
    return user


def auth_refresh(*, refresh: str, meta: RequestMeta) -> TokenPair:
    """Rotate a refresh token: it is blacklisted and a new pair issued, at most once.

    A token presented again after its rotation (a replay, or a stolen copy) is refused and
    recorded; with JWT_REVOKE_ON_REFRESH_REUSE every session of its user is ended too.
    """
    try:
        token = LexisRefreshToken(refresh)  # type: ignore[arg-type]  # simplejwt takes the str
    except TokenReusedError as exc:
        _refresh_reused(payload=exc.payload, meta=meta)
        raise InvalidToken() from None
    except TokenError:
        raise InvalidToken() from None
    user = _refresh_user(token.payload)
    jti = token[jwt_settings.JTI_CLAIM]
    reused = False
    with transaction.atomic():
        outstanding = OutstandingToken.objects.filter(jti=jti).first()
        if outstanding is None:
            raise InvalidToken()
        try:
            # The unique blacklist row is the claim: of two concurrent refreshes, one inserts
            # it and gets a pair; the other waits on that row and then fails here.
            with transaction.atomic():
                BlacklistedToken.objects.create(token=outstanding)
        except IntegrityError:
            reused = True
        else:
            organisation_id = token.get(ORGANISATION_CLAIM)
            organisation = (
                Organisation.objects.filter(id=organisation_id).first() if organisation_id else None
            )
            pair = token_pair_issue(user=user, organisation=organisation)
    if reused:
        _refresh_reused(payload=token.payload, meta=meta)
        raise InvalidToken()
    return pair


def auth_logout(*, refresh: str, meta: RequestMeta) -> None:
    """Blacklist one refresh token (idempotent). Its access token dies at its `exp`."""
    try:
        token = LexisRefreshToken(refresh)  # type: ignore[arg-type]  # simplejwt takes the str
    except TokenReusedError:
        return
    except TokenError:
        raise InvalidToken() from None
    token.blacklist()
    user = User.objects.filter(
        **{jwt_settings.USER_ID_FIELD: token.get(jwt_settings.USER_ID_CLAIM)}
    ).first()
    audit_record(action=AuditAction.LOGOUT, actor=user, target=user, meta=meta)


def auth_logout_all(*, user: User, meta: RequestMeta) -> None:
    """End every session of the caller, access tokens included."""
    user_tokens_revoke(user=user)
    audit_record(action=AuditAction.LOGOUT_ALL, actor=user, target=user, meta=meta)


# ---- Maintenance ------------------------------------------------------------------------------
def tokens_flush_expired() -> int:
    """Delete expired outstanding tokens (and their blacklist rows): `flushexpiredtokens`."""
    deleted, _ = OutstandingToken.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
