"""Tokens: JWT pairs (simplejwt) and the signed one-purpose tokens sent by email.

JWT claims added here: `ver` (the user's token version: raising it revokes every token of the
user, access tokens included) and, optionally, `org` (the organisation chosen at login).

A refresh token is recorded as an `OutstandingToken` by its jti, user and expiry, never by its text
(`token` is stored empty): a live refresh token is a credential, and revocation, rotation, reuse
detection and `flushexpiredtokens` all go by jti and expiry, so a copy in the table (and in its
admin, in dumps and backups) would only be something to steal.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.core import signing
from django.utils.translation import gettext_lazy as _
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.utils import datetime_from_epoch

from .models import Organisation, User

VERSION_CLAIM = "ver"
ORGANISATION_CLAIM = "org"


class TokenReusedError(TokenError):
    """A refresh token that was already rotated or revoked was presented again."""

    def __init__(self, message: Any, payload: dict[str, Any]) -> None:
        super().__init__(message)
        self.payload = payload


class LexisRefreshToken(RefreshToken):
    def check_blacklist(self) -> None:
        jti = self.payload[jwt_settings.JTI_CLAIM]
        if BlacklistedToken.objects.filter(token__jti=jti).exists():
            raise TokenReusedError(_("Token is blacklisted"), self.payload)

    # simplejwt's own `outstand()` and `blacklist()` record a token they have not seen with its
    # full text; these record it as `token_pair_issue` does, without it.
    def outstand(self) -> OutstandingToken:
        user_id = self.payload.get(jwt_settings.USER_ID_CLAIM)
        outstanding, _created = OutstandingToken.objects.get_or_create(
            jti=self.payload[jwt_settings.JTI_CLAIM],
            defaults={
                "user": User.objects.filter(**{jwt_settings.USER_ID_FIELD: user_id}).first(),
                "token": "",
                "created_at": self.current_time,
                "expires_at": datetime_from_epoch(self.payload["exp"]),
            },
        )
        return outstanding

    def blacklist(self) -> BlacklistedToken:
        blacklisted, _created = BlacklistedToken.objects.get_or_create(token=self.outstand())
        return blacklisted


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str


def token_pair_issue(*, user: User, organisation: Organisation | None = None) -> TokenPair:
    """A new refresh token (recorded as outstanding) and its access token."""
    refresh = LexisRefreshToken()
    refresh[jwt_settings.USER_ID_CLAIM] = str(getattr(user, jwt_settings.USER_ID_FIELD))
    refresh[VERSION_CLAIM] = user.token_version
    if organisation is not None:
        refresh[ORGANISATION_CLAIM] = str(organisation.id)
    encoded = str(refresh)
    OutstandingToken.objects.create(
        user=user,
        jti=refresh[jwt_settings.JTI_CLAIM],
        token="",  # never the token itself (see the module's docstring)
        created_at=refresh.current_time,
        expires_at=datetime_from_epoch(refresh["exp"]),
    )
    return TokenPair(access=str(refresh.access_token), refresh=encoded)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# ---- Email verification: signed, expiring, bound to the address it was sent to -----------------
_VERIFY_SALT = "lexiscore.accounts.verify-email"


def email_verification_token(*, user: User) -> str:
    return signing.dumps({"u": str(user.public_id), "e": user.email}, salt=_VERIFY_SALT)


def email_verification_read(token: str) -> dict[str, Any] | None:
    try:
        data = signing.loads(token, salt=_VERIFY_SALT, max_age=settings.EMAIL_VERIFICATION_MAX_AGE)
    except signing.BadSignature:  # includes SignatureExpired
        return None
    return data if isinstance(data, dict) and {"u", "e"} <= data.keys() else None


# ---- Password reset: Django's generator (dies when the password or last login changes) --------
def password_reset_token(*, user: User) -> str:
    return f"{user.public_id.hex}.{default_token_generator.make_token(user)}"


def password_reset_split(token: str) -> tuple[str, str] | None:
    public_hex, _, generator_token = (token or "").partition(".")
    if len(public_hex) != 32 or not generator_token:
        return None
    return public_hex, generator_token


def password_reset_check(*, user: User, generator_token: str) -> bool:
    return default_token_generator.check_token(user, generator_token)


# ---- Invitations: signed and expiring, plus a nonce whose hash the row keeps -------------------
_INVITATION_SALT = "lexiscore.accounts.invitation"


def invitation_token_new(*, invitation_id: str) -> tuple[str, str]:
    """Return (token for the email, hash to store on the invitation)."""
    nonce = secrets.token_urlsafe(24)
    token = signing.dumps({"i": invitation_id, "n": nonce}, salt=_INVITATION_SALT)
    return token, sha256_hex(nonce)


def invitation_token_read(token: str) -> tuple[str, str] | None:
    """Return (invitation id, nonce hash) of a valid, unexpired token."""
    try:
        data = signing.loads(token, salt=_INVITATION_SALT, max_age=settings.INVITATION_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or not {"i", "n"} <= data.keys():
        return None
    return str(data["i"]), sha256_hex(str(data["n"]))


# ---- API keys ----------------------------------------------------------------------------------
API_KEY_PREFIX = "lxk"


def api_key_new() -> tuple[str, str, str]:
    """Return (full key shown once, visible prefix, sha256 to store)."""
    prefix = secrets.token_hex(6)
    key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, sha256_hex(key)


def api_key_split(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    parts = (key or "").strip().split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or len(parts[1]) != 12 or len(parts[2]) < 32:
        return None
    return parts[1]
