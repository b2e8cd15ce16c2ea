"""Authentication of the OpenAI-compatible routes: OpenAI SDKs send `Authorization: Bearer <key>`.

On these routes a Bearer credential in LexisCore's API key format (`lxk_<prefix>_<secret>`,
`apps.accounts.tokens`) is an API key; any other Bearer credential is left to JWT
authentication. The key is checked by `ApiKeyAuthentication` itself (subclassed, not copied):
the failed-authentication limit per address, the known-key pass through it, revocation, expiry
and last-use stamping are exactly the native API's. A JWT never starts with the key prefix, so
no credential is tried both ways (and counted twice as a failure).
"""

from __future__ import annotations

from rest_framework.request import Request

from apps.accounts.authentication import ApiKeyAuthentication
from apps.accounts.tokens import API_KEY_PREFIX

BEARER = "bearer"


def _bearer_api_key(request: Request) -> str | None:
    """The API key sent as `Authorization: Bearer <key>`, or None (no Bearer, or not a key)."""
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) == 2 and parts[0].lower() == BEARER and parts[1].startswith(f"{API_KEY_PREFIX}_"):
        return parts[1]
    return None


class BearerApiKeyAuthentication(ApiKeyAuthentication):
    """`Authorization: Bearer lxk_...` as an API key, plus the native `Api-Key` / `X-API-Key`."""

    def authenticate_header(self, request: Request) -> str:
        # What OpenAI clients send; a 401 names it (DRF answers 403 without a header).
        return 'Bearer realm="api"'

    def authenticate(self, request: Request):
        parts = request.META.get("HTTP_AUTHORIZATION", "").split()
        is_bearer = bool(parts) and parts[0].lower() == BEARER
        if is_bearer and _bearer_api_key(request) is None:
            return None  # a JWT (or a malformed Bearer header): JWTAuthentication's to judge
        return super().authenticate(request)

    def _raw_key(self, request: Request) -> str | None:
        return _bearer_api_key(request) or super()._raw_key(request)
