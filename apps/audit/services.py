"""Writes of the audit app: one function, `audit_record`."""

from __future__ import annotations

import logging
from typing import Any

from django.db import models

from apps.core.context import get_request_id

from .models import AuditEvent

logger = logging.getLogger(__name__)


def _actor_fields(actor: Any, api_key: Any) -> dict[str, Any]:
    from apps.accounts.models import User

    if isinstance(actor, User):
        return {"actor_type": AuditEvent.ActorType.USER, "actor": actor, "actor_email": actor.email}
    if api_key is not None:
        return {"actor_type": AuditEvent.ActorType.API_KEY, "api_key": api_key}
    if actor == "system":
        return {"actor_type": AuditEvent.ActorType.SYSTEM}
    return {"actor_type": AuditEvent.ActorType.ANONYMOUS}


def audit_record(
    *,
    action: str,
    actor: Any = None,
    api_key: Any = None,
    organisation: Any = None,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str = "",
    target_repr: str = "",
    meta: Any = None,
    metadata: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event.

    `actor` is a User, "system", or None (anonymous); `meta` a `RequestMeta` with the client
    IP, user agent and request id (the request id falls back to the current context, so events
    recorded inside a task carry the id of the request that enqueued it).
    """
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(getattr(target, "public_id", None) or target.pk)
        target_repr = target_repr or str(target)
    event = AuditEvent(
        action=action,
        organisation=organisation,
        ip_address=getattr(meta, "ip", None),
        user_agent=(getattr(meta, "user_agent", "") or "")[:512],
        request_id=(getattr(meta, "request_id", None) or get_request_id() or "")[:128],
        target_type=target_type[:64],
        target_id=str(target_id)[:64],
        target_repr=target_repr[:255],
        metadata=metadata or {},
        **_actor_fields(actor, api_key),
    )
    event.save()
    logger.info(
        "audit %s", action, extra={"audit_action": action, "audit_target": target_id or None}
    )
    return event
