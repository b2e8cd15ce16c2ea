"""Reads of the accounts app. Anything of an organisation is read within that organisation."""

from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.core.exceptions import NotFoundError

from .models import ApiKey, Invitation, Membership, User


def _not_found(what: str) -> NotFoundError:
    return NotFoundError(f"No such {what}.")


def user_memberships(*, user: User) -> QuerySet[Membership]:
    """The caller's organisations with their role in each (one query)."""
    return (
        Membership.objects.filter(user=user)
        .select_related("organisation")
        .order_by("organisation__name", "organisation_id")
    )


def membership_of_user(*, user: User, organisation_id: uuid.UUID) -> Membership:
    membership = (
        Membership.objects.select_related("organisation", "user")
        .filter(user=user, organisation_id=organisation_id)
        .first()
    )
    if membership is None:
        raise _not_found("organisation")
    return membership


def membership_list(*, organisation_id: uuid.UUID, role: str | None = None) -> QuerySet[Membership]:
    queryset = Membership.objects.filter(organisation_id=organisation_id).select_related("user")
    if role:
        queryset = queryset.filter(role=role)
    return queryset.order_by("created_at", "id")


def membership_get(*, organisation_id: uuid.UUID, membership_id: uuid.UUID) -> Membership:
    membership = (
        Membership.objects.select_related("user", "organisation")
        .filter(organisation_id=organisation_id, id=membership_id)
        .first()
    )
    if membership is None:
        raise _not_found("member")
    return membership


def invitation_list(
    *, organisation_id: uuid.UUID, status: str | None = None
) -> QuerySet[Invitation]:
    queryset = Invitation.objects.filter(organisation_id=organisation_id).select_related(
        "invited_by"
    )
    if status:
        queryset = queryset.filter(status=status)
    return queryset.order_by("-created_at", "id")


def invitation_get(*, organisation_id: uuid.UUID, invitation_id: uuid.UUID) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organisation", "invited_by")
        .filter(organisation_id=organisation_id, id=invitation_id)
        .first()
    )
    if invitation is None:
        raise _not_found("invitation")
    return invitation


def api_key_list(*, organisation_id: uuid.UUID, active: bool | None = None) -> QuerySet[ApiKey]:
    """The organisation's keys; `active` as the output's `active` (`ApiKey.is_usable`): true for
    keys that work now (not revoked and not expired), false for revoked or expired ones."""
    queryset = ApiKey.objects.filter(organisation_id=organisation_id).select_related("created_by")
    if active is not None:
        usable = Q(revoked_at__isnull=True) & (
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )
        queryset = queryset.filter(usable if active else ~usable)
    return queryset.order_by("-created_at", "id")


def api_key_get(*, organisation_id: uuid.UUID, api_key_id: uuid.UUID) -> ApiKey:
    api_key = (
        ApiKey.objects.select_related("organisation", "created_by")
        .filter(organisation_id=organisation_id, id=api_key_id)
        .first()
    )
    if api_key is None:
        raise _not_found("API key")
    return api_key
