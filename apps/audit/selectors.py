"""Reads of the audit app, always within one organisation."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db.models import QuerySet

from apps.core.exceptions import NotFoundError

from .models import AuditEvent


def audit_event_list(
    *,
    organisation_id: uuid.UUID,
    action: str | None = None,
    actor_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    request_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    queryset = AuditEvent.objects.filter(organisation_id=organisation_id).select_related(
        "actor", "api_key"
    )
    if action:
        queryset = (
            queryset.filter(action__startswith=action.removesuffix("*"))
            if action.endswith("*")
            else queryset.filter(action=action)
        )
    if actor_id:
        queryset = queryset.filter(actor__public_id=actor_id)
    if target_type:
        queryset = queryset.filter(target_type=target_type)
    if target_id:
        queryset = queryset.filter(target_id=target_id)
    if request_id:
        queryset = queryset.filter(request_id=request_id)
    if since:
        queryset = queryset.filter(occurred_at__gte=since)
    if until:
        queryset = queryset.filter(occurred_at__lt=until)
    return queryset.order_by("-occurred_at", "-id")


def audit_event_get(*, organisation_id: uuid.UUID, event_id: uuid.UUID) -> AuditEvent:
    event = (
        AuditEvent.objects.filter(organisation_id=organisation_id, id=event_id)
        .select_related("actor", "api_key")
        .first()
    )
    if event is None:
        raise NotFoundError("No such audit event.")
    return event
