"""Which organisation a request acts for, with which role, and the permission classes built on it.

The organisation is chosen, in order, by the `X-Organisation` header, the `org` claim of the
access token, the API key's own organisation, or, when the user belongs to exactly one, that
one. An organisation the caller does not belong to answers 404, exactly like one that does not
exist. Views of later apps use `TenantPermission` (and `get_tenant(request)` for the scope of
their selectors) so that every object endpoint is scoped the same way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from rest_framework.exceptions import NotAuthenticated, PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from apps.core.exceptions import ApplicationError, NotFoundError

from .models import ApiKey, Membership, Organisation, Role, User, role_at_least

ORGANISATION_HEADER = "X-Organisation"
_CACHE_ATTR = "_lexiscore_tenant"


@dataclass(frozen=True)
class Tenant:
    """The caller as seen by one organisation."""

    organisation: Organisation
    role: str
    user: User | None = None
    api_key: ApiKey | None = None
    membership: Membership | None = None

    def has_role(self, minimum: str) -> bool:
        return role_at_least(self.role, minimum)


class OrganisationRequired(ApplicationError):
    status_code = 400
    code = "organisation_required"


def _organisation_not_found() -> NotFoundError:
    return NotFoundError("No such organisation.", code="organisation_not_found")


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        raise ApplicationError(
            f"{ORGANISATION_HEADER} must be an organisation id.", code="invalid_organisation"
        ) from None


def _requested_organisation_id(request: Request) -> uuid.UUID | None:
    header = request.headers.get(ORGANISATION_HEADER)
    if header:
        return _parse_uuid(header.strip())
    token = getattr(request, "auth", None)
    claim = token.get("org") if token is not None and hasattr(token, "get") else None
    return _parse_uuid(claim) if claim else None


def _resolve(request: Request) -> Tenant:
    from .authentication import ApiKeyPrincipal

    principal = request.user
    requested = _requested_organisation_id(request)
    if isinstance(principal, ApiKeyPrincipal):
        key = principal.api_key
        if requested is not None and requested != key.organisation_id:
            raise _organisation_not_found()
        return Tenant(organisation=key.organisation, role=key.role, api_key=key)

    if not isinstance(principal, User) or not principal.is_authenticated:
        # 401 with WWW-Authenticate, as on every endpoint: a client then signs in or refreshes.
        raise NotAuthenticated()
    # JWT authentication loaded the memberships with the user (apps.accounts.principals).
    loaded = getattr(principal, "principal_memberships", None)
    memberships = Membership.objects.select_related("organisation").filter(user=principal)
    if requested is not None:
        if loaded is not None:
            membership = next((m for m in loaded if m.organisation_id == requested), None)
        else:
            membership = memberships.filter(organisation_id=requested).first()
        if membership is None:
            raise _organisation_not_found()
    else:
        candidates = list(loaded[:2]) if loaded is not None else list(memberships[:2])
        if len(candidates) != 1:
            if not candidates:
                raise NotFoundError("You belong to no organisation.", code="no_organisation")
            raise OrganisationRequired(
                f"You belong to several organisations: choose one with the {ORGANISATION_HEADER}"
                " header."
            )
        membership = candidates[0]
    if not membership.organisation.is_active:
        raise PermissionDenied("This organisation has been deactivated.")
    return Tenant(
        organisation=membership.organisation,
        role=membership.role,
        user=principal,
        membership=membership,
    )


def get_tenant(request: Request) -> Tenant:
    """The caller's organisation and role (resolved once per request)."""
    tenant = getattr(request, _CACHE_ATTR, None)
    if tenant is None:
        tenant = _resolve(request)
        setattr(request, _CACHE_ATTR, tenant)
    return tenant


def cached_tenant(request: Request) -> Tenant | None:
    """The tenant if this request already resolved it (never queries)."""
    return getattr(request, _CACHE_ATTR, None)


class TenantPermission(BasePermission):
    """Member of the chosen organisation with the role the method needs.

    Reads need `viewer`, writes `member`; a view overrides with `required_role` (every method)
    or `required_roles = {"POST": Role.ADMIN, ...}`.
    """

    message = "Your role in this organisation does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        tenant = get_tenant(request)
        required = getattr(view, "required_roles", {}).get(request.method) or getattr(
            view, "required_role", None
        )
        if required is None:
            required = Role.VIEWER if request.method in SAFE_METHODS else Role.MEMBER
        if not tenant.has_role(required):
            raise PermissionDenied(self.message, code="insufficient_role")
        return True


class IsHumanUser(BasePermission):
    """A signed-in person (not an API key): account and organisation management."""

    message = "This endpoint needs a user's token, not an API key."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, User) and request.user.is_authenticated
