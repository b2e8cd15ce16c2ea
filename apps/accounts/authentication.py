"""DRF authentication: JWT access tokens (with revocation) and organisation API keys."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication as SimpleJWTAuthentication
from rest_framework_simplejwt.exceptions import (
    AuthenticationFailed,
    ExpiredTokenError,
    InvalidToken,
    TokenError,
)
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import Token

from apps.audit.context import bind_request_actor

from .models import ApiKey
from .network import RequestMeta, client_ip
from .principals import principal_get
from .ratelimit import _retry_after, _usage, ip_key
from .tokens import VERSION_CLAIM, api_key_split, sha256_hex

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _ValidatedTokens:
    """Access tokens this process has verified, by their exact encoded form (LRU).

    Verifying a token (HMAC, base64 and JSON decoding, claim checks) was ~10 % of a cached
    read's CPU, and a client sends the same token for its whole 5-15 minute life. The same
    bytes carry the same signed claims, so only the expiry can change the verdict: it is
    checked again on every use. Revocation is not a property of the token here but of the user
    (`token_version`, checked by `get_user` on every request), so it is unaffected.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._tokens: OrderedDict[bytes, Token] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, raw: bytes) -> Token | None:
        with self._lock:
            token = self._tokens.get(raw)
            if token is None:
                return None
            if token.get("exp", 0) + _leeway_seconds() <= time.time():
                del self._tokens[raw]
                return None
            self._tokens.move_to_end(raw)
            return token

    def put(self, raw: bytes, token: Token) -> None:
        with self._lock:
            self._tokens[raw] = token
            self._tokens.move_to_end(raw)
            while len(self._tokens) > self._size:
                self._tokens.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


def _leeway_seconds() -> float:
    leeway = jwt_settings.LEEWAY
    return leeway.total_seconds() if isinstance(leeway, timedelta) else float(leeway or 0)


validated_tokens = _ValidatedTokens()


# ---- failed authentications per client IP ------------------------------------------------------
# DRF authenticates before any throttle runs: without this, a request with a made-up API key or
# token gets its 401 (after a database or cache lookup) however often it is sent. Failures are
# counted per client IP (`client_ip`: proxy-aware; IPv6 per /64) in the shared cache; past
# RATE_LIMIT_AUTH_FAILURES the address gets 429 with Retry-After, before its credential is looked
# up. An expired access token (validly signed, so no guess) is not counted: every client sends one
# now and then.
AUTH_FAILURES_GROUP = "guard:auth_failures:ip"


class _ExpiringKeys:
    """Keys remembered until their own deadline (monotonic), least recently marked first out
    past `size`: a process-local hint, never the source of truth."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def mark(self, key: str, seconds: float) -> None:
        with self._lock:
            self._until[key] = time.monotonic() + seconds
            self._until.move_to_end(key)
            while len(self._until) > self._size:
                self._until.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return False
            if until <= time.monotonic():
                del self._until[key]
                return False
            return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._until.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._until.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._until)


# The addresses this process saw go over the limit, until their window ends (LRU).
#
# Only a hint, so that a request whose address failed nothing costs no extra cache round trip:
# a hinted address is confirmed in the shared counter before it is refused (a cleared or lost
# counter frees it). Another process learns of the address at its first failure there, which
# is then answered 429 instead of 401.
over_the_limit = _ExpiringKeys()


def _auth_failures_rate() -> str | None:
    if not settings.RATE_LIMIT_ENABLED:
        return None
    return settings.RATE_LIMIT_AUTH_FAILURES or None


def _refusal(usage: dict[str, Any]) -> exceptions.Throttled:
    return exceptions.Throttled(
        wait=_retry_after(usage),
        detail="Too many failed authentications from this address.",
    )


def auth_failures_refusal(request: Any) -> exceptions.Throttled | None:
    """Before a credential is looked up: the 429 to answer if the client's address is over the
    limit, else None."""
    rate = _auth_failures_rate()
    if rate is None:
        return None
    key = ip_key(client_ip(request))
    if key not in over_the_limit:
        return None
    usage = _usage(None, group=AUTH_FAILURES_GROUP, key=key, rate=rate, increment=False)
    if usage is not None and usage["count"] >= usage["limit"]:
        return _refusal(usage)
    over_the_limit.forget(key)  # a new window (or the store is down: fail open)
    return None


def auth_failure_count(request: Any) -> exceptions.Throttled | None:
    """Count one failed authentication of the client's address; the 429 to answer instead of
    the 401 when the address was already over the limit. Fails open without the cache."""
    rate = _auth_failures_rate()
    if rate is None:
        return None
    key = ip_key(client_ip(request))
    usage = _usage(None, group=AUTH_FAILURES_GROUP, key=key, rate=rate, increment=True)
    if usage is None:
        return None
    if usage["count"] >= usage["limit"]:
        over_the_limit.mark(key, _retry_after(usage))
    if usage["count"] > usage["limit"]:
        return _refusal(usage)
    return None


class ExpiredAccessToken(InvalidToken):
    """A validly signed token past its `exp`: answered 401 like any other, but not counted."""

    # A failure that is no guess (the credential was genuine once): `guard_authentication` does
    # not count an AuthenticationFailed that says so.
    not_a_guess = True


class RevokedCredential(AuthenticationFailed):
    """A credential whose signature checked out but which no longer works (its user was deleted
    or deactivated, signed out everywhere, changed password): answered 401, not counted."""

    not_a_guess = True


KNOWN_KEY_SECONDS = 600
# Digests of API keys that authenticated lately (`KNOWN_KEY_SECONDS`): a key proven genuine is
# let through an address's failure limit, so one client behind a shared address sending bad keys
# does not lock out the others' valid ones. Kept in this process (no round trip on the hot path)
# and in the shared cache, written once per process and period, so that a key known to one web
# process (or before a restart) is known to all; read from the cache only for a blocked address.
known_keys = _ExpiringKeys()
KNOWN_KEY_CACHE_PREFIX = "auth:known-key:"


def _remember_key(digest: str) -> None:
    if digest in known_keys:
        return
    known_keys.mark(digest, KNOWN_KEY_SECONDS)
    try:
        cache.set(KNOWN_KEY_CACHE_PREFIX + digest, 1, KNOWN_KEY_SECONDS)
    except Exception:  # the cache down: this process still knows it
        logger.warning("Could not share a known API key in the cache", exc_info=True)


def _forget_key(digest: str) -> None:
    known_keys.forget(digest)
    try:
        cache.delete(KNOWN_KEY_CACHE_PREFIX + digest)
    except Exception:
        logger.warning("Could not drop a known API key from the cache", exc_info=True)


def _key_known(digest: str) -> bool:
    if digest in known_keys:
        return True
    try:
        return cache.get(KNOWN_KEY_CACHE_PREFIX + digest) is not None
    except Exception:
        return False


def guard_authentication(
    request: Any, authenticate: Callable[[], T], *, genuine: Callable[[], bool] | None = None
) -> T:
    """`authenticate()` for a request that carries a credential, under the failure limit.

    `genuine()`: whether the credential can be shown authentic without a database lookup (a
    token's or ticket's signature, an API key this process saw authenticate lately). Such a
    credential is let through when its address is over the limit: the limit stops guessing, and
    a shared address (an office's NAT, a campus) must not lock out every valid client because
    one of them sends bad credentials."""
    refusal = auth_failures_refusal(request)
    if refusal is not None and not (genuine is not None and genuine()):
        raise refusal
    try:
        return authenticate()
    except exceptions.AuthenticationFailed as error:
        if getattr(error, "not_a_guess", False):
            raise
        refusal = auth_failure_count(request)
        if refusal is not None:
            raise refusal from None
        raise


class JWTAuthentication(SimpleJWTAuthentication):
    """simplejwt's authentication plus the token version check.

    A password change or reset, a deactivation or a removal from an organisation raises the
    user's `token_version`; every token issued before then (access tokens too) stops working on
    its next request instead of living until `exp`.
    """

    def get_validated_token(self, raw_token: bytes) -> Token:
        token = validated_tokens.get(raw_token)
        if token is None:
            token = self._validate(raw_token)
            validated_tokens.put(raw_token, token)
        return token

    def _validate(self, raw_token: bytes) -> Token:
        """simplejwt's validation (same error), telling an expired token from any other failure:
        an expired token's signature was verified first, so it is no guess and is not counted
        against the client's address."""
        messages = []
        expired = False
        for token_class in jwt_settings.AUTH_TOKEN_CLASSES:
            try:
                return token_class(raw_token)
            except TokenError as error:
                expired = expired or isinstance(error, ExpiredTokenError)
                messages.append(
                    {
                        "token_class": token_class.__name__,
                        "token_type": token_class.token_type,
                        "message": error.args[0],
                    }
                )
        failure = ExpiredAccessToken if expired else InvalidToken
        raise failure(
            {"detail": _("Given token not valid for any token type"), "messages": messages}
        )

    def get_user(self, validated_token: Token) -> Any:
        """simplejwt's lookup (unknown or inactive user: 401), through the principal cache.

        The user's memberships come with it and are kept on the user for the tenancy
        resolution of this request (`apps.accounts.tenancy`), so an authenticated request
        usually costs one cache round trip instead of two queries. simplejwt's
        CHECK_REVOKE_TOKEN (a password hash claim) is not used: the version claim replaces it.
        """
        try:
            user_id = validated_token[jwt_settings.USER_ID_CLAIM]
        except KeyError:
            raise InvalidToken("Token contained no recognizable user identification") from None
        # Past the signature check: whatever fails now is no guess (RevokedCredential).
        principal = principal_get(user_id)
        if principal is None:
            raise RevokedCredential("User not found", code="user_not_found")
        user = principal.user
        if not user.is_active:
            raise RevokedCredential("User is inactive", code="user_inactive")
        if validated_token.get(VERSION_CLAIM) != user.token_version:
            raise RevokedCredential("Token has been revoked.", code="token_revoked")
        user.principal_memberships = principal.memberships
        return user

    def _signed(self, request: Request) -> bool:
        """The token's signature checks out (expired or not): no database, no cache."""
        header = self.get_header(request)
        raw = self.get_raw_token(header) if header is not None else None
        if raw is None:
            return False
        try:
            self.get_validated_token(raw)
        except ExpiredAccessToken:
            return True
        except InvalidToken:
            return False
        return True

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = self.get_header(request)
        if header is None or self.get_raw_token(header) is None:
            return None  # no bearer token (none, or another scheme's): nothing to count
        result = guard_authentication(
            request,
            lambda: super(JWTAuthentication, self).authenticate(request),
            genuine=lambda: self._signed(request),
        )
        if result is not None:
            bind_request_actor(request, result[0])
        return result


class ApiKeyPrincipal:
    """`request.user` for a call made with an API key: authenticated, but not a person."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key

    def __str__(self) -> str:
        return f"API key {self.api_key.prefix}"

    def has_perm(self, *_args: Any, **_kwargs: Any) -> bool:
        return False


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Api-Key <key>` or `X-API-Key: <key>`."""

    keyword = "Api-Key"

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'

    def _raw_key(self, request: Request) -> str | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if header:
            parts = header.split()
            if parts and parts[0].lower() == self.keyword.lower():
                if len(parts) != 2:
                    raise InvalidToken("Malformed API key header.", code="invalid_api_key")
                return parts[1]
        return request.META.get("HTTP_X_API_KEY") or None

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        if not request.META.get("HTTP_AUTHORIZATION") and not request.META.get("HTTP_X_API_KEY"):
            return None  # no credential: nothing to count
        # The failure limit is checked before the key is looked up (one query per request); a
        # key that authenticated here lately is let through it.
        return guard_authentication(
            request, lambda: self._authenticate(request), genuine=lambda: self._known(request)
        )

    def _known(self, request: Request) -> bool:
        try:
            raw = self._raw_key(request)
        except AuthenticationFailed:
            return False
        return raw is not None and _key_known(sha256_hex(raw.strip()))

    def _authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        from .services import api_key_mark_used

        raw = self._raw_key(request)
        if raw is None:
            return None
        failure = AuthenticationFailed("Invalid API key.", code="invalid_api_key")
        prefix = api_key_split(raw)
        if prefix is None:
            raise failure
        digest = sha256_hex(raw.strip())
        key = ApiKey.objects.select_related("organisation").filter(prefix=prefix).first()
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise failure  # never authenticated: nothing to forget
        if not key.is_usable or not key.organisation.is_active:
            _forget_key(digest)
            # The key was genuine: a revoked or expired one is no guess.
            raise RevokedCredential("Invalid API key.", code="invalid_api_key")
        _remember_key(digest)
        api_key_mark_used(api_key=key, meta=RequestMeta.from_request(request))
        bind_request_actor(request, None)
        return ApiKeyPrincipal(key), key
