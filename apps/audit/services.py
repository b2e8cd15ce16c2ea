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


def history_record_updates(changed: list[tuple[models.Model, models.Model]]) -> None:
    """django-auditlog history for rows a queryset `update()` changed (it sends no signal, so
    the registered models' post_save receiver writes nothing): one UPDATE entry per (before,
    after) pair that differs in a logged field, as a `save()` would write, in one insert. Each
    entry is sent LogEntry's `pre_save`, as a save would, so that auditlog's `set_actor` context
    (the request's actor and address), where one is open, fills it in."""
    from auditlog.cid import get_cid
    from auditlog.context import auditlog_disabled
    from auditlog.diff import model_instance_diff
    from auditlog.models import LogEntry
    from django.conf import settings
    from django.contrib.contenttypes.models import ContentType
    from django.db.models.signals import pre_save
    from django.utils.encoding import smart_str

    if auditlog_disabled.get():
        return
    entries = []
    for before, after in changed:
        # auditlog.conf sets the default on django's settings, which django-stubs cannot see.
        json_changes = settings.AUDITLOG_STORE_JSON_CHANGES  # type: ignore[misc]
        diff = model_instance_diff(before, after, use_json_for_changes=json_changes)
        if not diff:
            continue
        pk = after.pk
        entry = LogEntry(
            content_type=ContentType.objects.get_for_model(after),
            object_pk=smart_str(pk),
            object_id=pk if isinstance(pk, int) else None,
            object_repr=smart_str(after),
            action=LogEntry.Action.UPDATE,
            changes=diff,
            cid=get_cid(),
        )
        pre_save.send(sender=LogEntry, instance=entry, raw=False, using=None, update_fields=None)
        entries.append(entry)
    LogEntry.objects.bulk_create(entries)
