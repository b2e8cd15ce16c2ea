"""DRF authentication: JWT access tokens (with revocation) and organisation API keys."""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from rest_framework import authentication
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication as SimpleJWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import Token

from apps.audit.context import bind_request_actor

from .models import ApiKey
from .network import RequestMeta
from .principals import principal_get
from .tokens import VERSION_CLAIM, api_key_split, sha256_hex


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


class JWTAuthentication(SimpleJWTAuthentication):
    """simplejwt's authentication plus the token version check.

    A password change or reset, a deactivation or a removal from an organisation raises the
    user's `token_version`; every token issued before then (access tokens too) stops working on
    its next request instead of living until `exp`.
    """

    def get_validated_token(self, raw_token: bytes) -> Token:
        token = validated_tokens.get(raw_token)
        if token is None:
            token = super().get_validated_token(raw_token)
            validated_tokens.put(raw_token, token)
        return token

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
        principal = principal_get(user_id)
        if principal is None:
            raise AuthenticationFailed("User not found", code="user_not_found")
        user = principal.user
        if not user.is_active:
            raise AuthenticationFailed("User is inactive", code="user_inactive")
        if validated_token.get(VERSION_CLAIM) != user.token_version:
            raise AuthenticationFailed("Token has been revoked.", code="token_revoked")
        user.principal_memberships = principal.memberships
        return user

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        result = super().authenticate(request)
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
        from .services import api_key_mark_used

        raw = self._raw_key(request)
        if raw is None:
            return None
        failure = AuthenticationFailed("Invalid API key.", code="invalid_api_key")
        prefix = api_key_split(raw)
        if prefix is None:
            raise failure
        key = ApiKey.objects.select_related("organisation").filter(prefix=prefix).first()
        if key is None or not hmac.compare_digest(key.key_hash, sha256_hex(raw.strip())):
            raise failure
        if not key.is_usable or not key.organisation.is_active:
            raise failure
        api_key_mark_used(api_key=key, meta=RequestMeta.from_request(request))
        bind_request_actor(request, None)
        return ApiKeyPrincipal(key), key
