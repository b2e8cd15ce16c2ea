"""Webhook endpoints (register, disable, rotate, test) and delivery of events to them.

Publishing an event writes one `WebhookDelivery` per subscribed active endpoint in the caller's
transaction and, after commit, asks the webhooks queue to try each once. Every later try is found
by the beat task `send_due_deliveries` from `next_attempt_at`; a try first claims its row with a
conditional UPDATE, so a duplicated message never sends twice at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core import crypto
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError

from . import network, signing
from .models import (
    SUBSCRIBABLE_EVENTS,
    DeliveryStatus,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

logger = logging.getLogger(__name__)

# What a try returns when its endpoint was deleted meanwhile (the delivery went with it).
DELETED = "deleted"


class UnsafeWebhookURL(ApplicationError):
    code = "unsafe_webhook_url"


# ---- Endpoints ----------------------------------------------------------------------------------
def _checked_url(url: str) -> str:
    try:
        network.check_url(url)
    except network.UnsafeURLError as exc:
        raise UnsafeWebhookURL(str(exc), details={"url": ["Refused: " + str(exc)]}) from None
    return url.strip()


def _checked_events(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(SUBSCRIBABLE_EVENTS))
    if unknown or not event_types:
        raise ApplicationError(
            "Choose one or more known event types.",
            code="invalid_event_types",
            details={"event_types": unknown, "known": SUBSCRIBABLE_EVENTS},
        )
    return sorted(set(event_types))


def _audit(
    action: str,
    endpoint: WebhookEndpoint,
    *,
    actor: Any,
    api_key: Any = None,
    meta: Any = None,
    **metadata: Any,
) -> None:
    """One audit event about an endpoint (who changed where, and whether, events are sent).

    The trail is append-only and outlives the endpoint, so it keeps the URL's scheme and host
    and a SHA-256 of the whole URL, never the URL: a path or query may be the receiver's
    capability token (`https://hooks.example.com/services/T0/B0/<secret>`)."""
    parts = urlsplit(endpoint.url)
    destination = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    audit_record(
        action=action,
        actor=actor,
        api_key=api_key,
        organisation=endpoint.organisation,
        target=endpoint,
        target_repr=f"Webhook endpoint {endpoint.pk} to {destination}"[:255],
        meta=meta,
        metadata={
            "endpoint_id": str(endpoint.pk),
            "destination": destination,
            "url_sha256": hashlib.sha256(endpoint.url.encode()).hexdigest(),
            **metadata,
        },
    )


@transaction.atomic
def endpoint_create(
    *,
    organisation,
    user,
    url: str,
    event_types: list[str],
    description: str = "",
    api_key: Any = None,
    meta: Any = None,
) -> WebhookEndpoint:
    """Register an endpoint; the returned instance carries the secret (shown to the caller once).

    Every event fans out to every subscribed endpoint, so an organisation has at most
    `WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX` (disabled ones count: they can be enabled again).
    The count is read under the organisation's row lock (`FOR NO KEY UPDATE`, the first lock
    taken here), so parallel creates wait for each other and cannot both take the last place.
    """
    from apps.accounts.models import Organisation

    url = _checked_url(url)
    event_types = _checked_events(event_types)
    Organisation.objects.select_for_update(no_key=True).filter(pk=organisation.pk).first()
    limit = settings.WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX
    count = WebhookEndpoint.objects.filter(organisation_id=organisation.pk).count()
    if limit and count >= limit:
        raise ConflictError(
            f"This organisation has {count} webhook endpoints, the most it may have. "
            "Delete one first.",
            code="webhook_endpoint_limit",
            details={"limit": limit},
        )
    endpoint = WebhookEndpoint.objects.create(
        organisation=organisation,
        created_by=user,
        url=url,
        event_types=event_types,
        description=description,
        secret=signing.secret_new(),
    )
    _audit(
        AuditAction.WEBHOOK_ENDPOINT_CREATED,
        endpoint,
        actor=user,
        api_key=api_key,
        meta=meta,
        event_types=event_types,
    )
    return endpoint


@transaction.atomic
def endpoint_disable(
    *,
    endpoint: WebhookEndpoint,
    reason: str,
    actor: Any,
    api_key: Any = None,
    meta: Any = None,
) -> WebhookEndpoint:
    """Stop sending to the endpoint. `actor`: who, for the audit trail (a user, or "system"
    when its failures did); named by every caller, so none is recorded as someone else."""
    endpoint.is_active = False
    endpoint.disabled_reason = reason[:200]
    endpoint.disabled_at = timezone.now()
    endpoint.save(update_fields=["is_active", "disabled_reason", "disabled_at", "updated_at"])
    _audit(
        AuditAction.WEBHOOK_ENDPOINT_DISABLED,
        endpoint,
        actor=actor,
        api_key=api_key,
        meta=meta,
        reason=endpoint.disabled_reason,
    )
    return endpoint


@transaction.atomic
def endpoint_enable(
    *, endpoint: WebhookEndpoint, actor: Any = None, api_key: Any = None, meta: Any = None
) -> WebhookEndpoint:
    _checked_url(endpoint.url)
    endpoint.is_active = True
    endpoint.disabled_reason = ""
    endpoint.disabled_at = None
    endpoint.consecutive_failures = 0
    endpoint.failing_since = None
    endpoint.save()
    _audit(AuditAction.WEBHOOK_ENDPOINT_ENABLED, endpoint, actor=actor, api_key=api_key, meta=meta)
    return endpoint


@transaction.atomic
def endpoint_rotate_secret(
    *, endpoint: WebhookEndpoint, actor: Any = None, api_key: Any = None, meta: Any = None
) -> WebhookEndpoint:
    """New secret; the old one keeps signing (a second signature) during the overlap."""
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = timezone.now() + timedelta(
        seconds=settings.WEBHOOK_SECRET_ROTATION_OVERLAP_SECONDS
    )
    endpoint.secret = signing.secret_new()
    endpoint.save()
    _audit(AuditAction.WEBHOOK_SECRET_ROTATED, endpoint, actor=actor, api_key=api_key, meta=meta)
    return endpoint


@transaction.atomic
def endpoint_delete(
    *, endpoint: WebhookEndpoint, actor: Any = None, api_key: Any = None, meta: Any = None
) -> None:
    _audit(AuditAction.WEBHOOK_ENDPOINT_DELETED, endpoint, actor=actor, api_key=api_key, meta=meta)
    endpoint.delete()


@transaction.atomic
def delivery_redeliver(
    *,
    endpoint: WebhookEndpoint,
    delivery_id: Any,
    actor: Any = None,
    api_key: Any = None,
    meta: Any = None,
    limited: bool = True,
) -> WebhookDelivery:
    """Send an ended delivery again: one that failed (its receiver was down past the schedule,
    or the endpoint was disabled meanwhile) or one that succeeded and is wanted again (a
    receiver that lost what it stored).

    The same event goes out: its `webhook-id` and payload are the first delivery's, so a
    receiver that deduplicates on the id (as Standard Webhooks asks) takes it at most once, and
    the signature is made anew with the current secret. The delivery starts a new series of
    tries on the retry schedule (`attempts` counts from 0 again; its log keeps every try), and
    its first try is published after commit.

    Refused: a delivery still being tried (409 `delivery_pending`), a disabled endpoint (400
    `endpoint_disabled`, enable it first), and past `WEBHOOK_REDELIVERIES_PER_HOUR` for the
    organisation (429 `webhook_redelivery_limit`; `limited=False` for operators in the admin).
    """
    # The delivery first, then its endpoint: the order `_record` and a cascading delete lock
    # them in (the other order could deadlock with a try being recorded).
    delivery = (
        WebhookDelivery.objects.select_for_update()
        .filter(endpoint_id=endpoint.pk, pk=delivery_id)
        .first()
    )
    if delivery is None:
        raise NotFoundError("No such delivery to this endpoint.", code="delivery_not_found")
    if delivery.status == DeliveryStatus.PENDING:
        raise ConflictError(
            "This delivery is still being tried; it can be sent again once it has succeeded "
            "or failed.",
            code="delivery_pending",
            details={
                "next_attempt_at": (
                    delivery.next_attempt_at.isoformat() if delivery.next_attempt_at else None
                )
            },
        )
    locked = WebhookEndpoint.objects.select_for_update(no_key=True).filter(pk=endpoint.pk).first()
    if locked is None:
        raise NotFoundError("This webhook endpoint no longer exists.")
    if not locked.is_active:
        raise ApplicationError(
            "The endpoint is disabled: enable it, then send the delivery again.",
            code="endpoint_disabled",
        )
    if limited:
        _hourly_limit(
            locked.organisation_id,
            limit=settings.WEBHOOK_REDELIVERIES_PER_HOUR,
            group="guard:webhook_redelivery:organisation",
            code="webhook_redelivery_limit",
            message="This organisation's deliveries were sent again {limit} times this hour, "
            "the most they may be. Try again in {wait} seconds.",
            # Without the cache: its deliveries redelivered within the hour (one sent again
            # twice counts once).
            recent=lambda since: (
                WebhookDelivery.objects.filter(
                    organisation_id=locked.organisation_id, redelivered_at__gt=since
                )
                .order_by("-redelivered_at")
                .values_list("redelivered_at", flat=True)
            ),
        )
    now = timezone.now()
    previous_status, previous_attempts = delivery.status, delivery.attempts
    delivery.status = DeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.delivered_at = None
    delivery.redeliveries += 1
    delivery.redelivered_at = now
    delivery.save(
        update_fields=[
            "status",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "redeliveries",
            "redelivered_at",
            "updated_at",
        ]
    )
    _audit(
        AuditAction.WEBHOOK_DELIVERY_REDELIVERED,
        locked,
        actor=actor,
        api_key=api_key,
        meta=meta,
        delivery_id=str(delivery.pk),
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        previous_status=previous_status,
        previous_attempts=previous_attempts,
    )
    delivery_ids = [str(delivery.pk)]
    transaction.on_commit(lambda: deliveries_publish(delivery_ids), robust=True)
    return delivery


LIMIT_WINDOW = timedelta(hours=1)


@transaction.atomic
def endpoint_send_test(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Queue a test event to the endpoint: an organisation's endpoints get at most
    `WEBHOOK_TEST_SENDS_PER_HOUR` test events per hour, together.

    Each is a delivery on the shared webhooks queue (with its retries), so past the limit the
    answer is 429 `webhook_test_limit` with Retry-After. Counted per organisation in the shared
    cache (one atomic increment per send; a fixed hourly window), so deleting and creating
    endpoints again does not reset it. Without the cache, the endpoint's own test deliveries of
    the last hour are counted instead (under its row lock).
    """
    locked = WebhookEndpoint.objects.select_for_update(no_key=True).filter(pk=endpoint.pk).first()
    if locked is None:
        raise NotFoundError("This webhook endpoint no longer exists.")
    if not locked.is_active:
        raise ApplicationError("The endpoint is disabled.", code="endpoint_disabled")
    _hourly_limit(
        locked.organisation_id,
        limit=settings.WEBHOOK_TEST_SENDS_PER_HOUR,
        group="guard:webhook_test:organisation",
        code="webhook_test_limit",
        message="This organisation's endpoints were sent {limit} test events this hour, the "
        "most they may be. Try again in {wait} seconds.",
        # Without the cache: the endpoint's own test deliveries of the hour.
        recent=lambda since: (
            WebhookDelivery.objects.filter(
                endpoint_id=locked.pk, event_type=EventType.TEST, created_at__gt=since
            )
            .order_by("-created_at")
            .values_list("created_at", flat=True)
        ),
    )
    data = {"message": "This is a test event from LexisCore."}
    return _deliveries_create([locked], EventType.TEST, data)[0]


def _hourly_limit(
    organisation_id: Any,
    *,
    limit: int,
    group: str,
    code: str,
    message: str,
    recent: Callable[[datetime], Any],
) -> None:
    """At most `limit` of an action per organisation per hour (0: no limit), counted in the
    shared cache (one atomic increment per action; a fixed hourly window); without the cache,
    `recent(since)` gives the times of the organisation's actions since an hour ago, newest
    first. Past it: 429 `code` with `message` (`{limit}`, `{wait}`) and Retry-After."""
    from apps.accounts.ratelimit import _retry_after, _usage

    if not limit:
        return
    usage = _usage(
        None, group=group, key=f"org:{organisation_id}", rate=f"{limit}/h", increment=True
    )
    if usage is None:
        now = timezone.now()
        times = [at for at in recent(now - LIMIT_WINDOW)[:limit] if at is not None]
        if len(times) < limit:
            return
        # Room for one more once the limit-th most recent leaves the hour.
        wait = max(math.ceil((times[-1] + LIMIT_WINDOW - now).total_seconds()), 1)
    elif usage["should_limit"]:
        wait = _retry_after(usage)
    else:
        return
    raise ApplicationError(
        message.format(limit=limit, wait=wait),
        code=code,
        status_code=429,
        details={"limit": limit, "retry_after_seconds": wait},
        headers={"Retry-After": str(wait)},
    )


# ---- Events -------------------------------------------------------------------------------------
def _event_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _payload(event_id: str, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": event_type,
        "timestamp": timezone.now().isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def _deliveries_create(
    endpoints: list[WebhookEndpoint], event_type: str, data: dict[str, Any]
) -> list[WebhookDelivery]:
    now = timezone.now()
    event_id = _event_id()
    payload = json.loads(json.dumps(_payload(event_id, event_type, data), cls=DjangoJSONEncoder))
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            organisation_id=endpoint.organisation_id,
            endpoint=endpoint,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            next_attempt_at=now,
        )
        for endpoint in endpoints
    )
    ids = [str(d.pk) for d in deliveries]
    if ids:
        transaction.on_commit(lambda: deliveries_publish(ids), robust=True)
    return deliveries


def deliveries_publish(delivery_ids: list[str], *, due_at: datetime | None = None) -> int:
    """Ask the webhooks queue to try each delivery now; returns how many were published.

    `due_at`: the sweep's mark (`due_deliveries_take`), which the try accepts as due. Never
    raises: a delivery whose publish fails (broker down) stays due in the database (the sweep's
    mark is taken back) and beat's `send_due_deliveries` sends it, so the caller (a job that just
    completed) goes on.
    """
    from workers.webhooks import deliver

    published = 0
    for delivery_id in delivery_ids:
        try:
            if due_at is None:
                deliver.apply_async(args=[delivery_id])
            else:
                deliver.apply_async(args=[delivery_id], kwargs={"due_at": due_at.isoformat()})
        except Exception:
            logger.warning(
                "Webhook delivery %s not published; the due-delivery sweep will send it",
                delivery_id,
                exc_info=True,
                extra={"delivery_id": delivery_id},
            )
            if due_at is not None:
                _unmark(delivery_id, due_at)
        else:
            published += 1
    return published


def _unmark(delivery_id: str, due_at: datetime) -> None:
    """Make a delivery the sweep marked but could not publish due again at once."""
    try:
        WebhookDelivery.objects.filter(
            pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at=due_at
        ).update(next_attempt_at=timezone.now())
    except DatabaseError:
        logger.warning("Webhook delivery %s: could not clear the sweep's mark", delivery_id)


def event_publish(*, organisation, event_type: str, data: dict[str, Any]) -> list[WebhookDelivery]:
    """Queue `event_type` for every active endpoint of `organisation` subscribed to it."""
    endpoints = [
        e
        for e in WebhookEndpoint.objects.filter(organisation=organisation, is_active=True)
        if event_type in e.event_types
    ]
    return _deliveries_create(endpoints, event_type, data) if endpoints else []


# ---- Delivery -----------------------------------------------------------------------------------
def retry_delay(attempt: int) -> float:
    """Seconds before try `attempt + 1` after `attempt` failed: the schedule, ±20 % jitter."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    base = schedule[min(attempt, len(schedule)) - 1]
    return base * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not a secret)


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
        except (TypeError, ValueError):
            return None


def _claim(delivery_id: str, now: datetime, due_at: datetime | None = None) -> bool:
    """Take a due delivery for one try (`WEBHOOK_CLAIM_LEASE_SECONDS`). Due: its time has come,
    or it still carries the mark of the sweep that published this message (`due_at`)."""
    lease = now + timedelta(seconds=settings.WEBHOOK_CLAIM_LEASE_SECONDS)
    due = Q(next_attempt_at__lte=now)
    if due_at is not None:
        due |= Q(next_attempt_at=due_at)
    return bool(
        WebhookDelivery.objects.filter(due, pk=delivery_id, status=DeliveryStatus.PENDING).update(
            next_attempt_at=lease
        )
    )


# Shown in the endpoint's delivery log: says what happened, names no key and no value.
UNDECRYPTABLE_ERROR = (
    "Not sent: the signing secret could not be decrypted (server configuration); "
    "it will be retried."
)


def _signing_secrets(endpoint: WebhookEndpoint) -> list[str]:
    """The secrets that sign now; `crypto.DecryptionError` if the current one cannot be read.

    An unreadable previous secret is left out (logged): the current one still signs.
    """
    secrets_ = [crypto.plaintext(endpoint.secret)]
    if endpoint.previous_secret and (endpoint.previous_secret_expires_at or timezone.now()) > (
        timezone.now()
    ):
        try:
            secrets_.append(crypto.plaintext(endpoint.previous_secret))
        except crypto.DecryptionError:
            logger.error(
                "Webhook endpoint %s: previous signing secret cannot be decrypted; signing with "
                "the current one only",
                endpoint.pk,
                extra={"endpoint_id": str(endpoint.pk)},
            )
    return secrets_


def _headers(secrets_: list[str], delivery: WebhookDelivery, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "content-type": "application/json",
        "user-agent": "LexisCore-Webhooks/1",
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(secrets_, delivery.event_id, timestamp, body),
    }


def delivery_attempt(*, delivery_id: str, due_at: datetime | None = None) -> str:
    """Try one due delivery; returns its status afterwards ("skipped" if not due or claimed)."""
    now = timezone.now()
    if not _claim(delivery_id, now, due_at):
        return "skipped"
    delivery = (
        WebhookDelivery.objects.select_related("endpoint", "organisation")
        .filter(pk=delivery_id)
        .first()
    )
    if delivery is None:
        return DELETED
    endpoint = delivery.endpoint
    if not endpoint.is_active:
        _finish(delivery, DeliveryStatus.FAILED, error="The endpoint is disabled.")
        return delivery.status
    if not delivery.organisation.is_active:
        # Nothing leaves on behalf of a deactivated organisation (not even what was queued).
        _finish(delivery, DeliveryStatus.FAILED, error="The organisation is deactivated.")
        return delivery.status
    try:
        secrets_ = _signing_secrets(endpoint)
    except crypto.DecryptionError:
        # A key missing from FIELD_ENCRYPTION_KEYS: not the receiver's fault, so the endpoint is
        # not counted as failing; the try is logged and retried on the schedule, and succeeds
        # once the key is back (or after the endpoint's secret is rotated).
        logger.error(
            "Webhook delivery %s not sent: the signing secret of endpoint %s cannot be "
            "decrypted with any key in FIELD_ENCRYPTION_KEYS",
            delivery.pk,
            endpoint.pk,
            extra={"delivery_id": str(delivery.pk), "endpoint_id": str(endpoint.pk)},
        )
        return _record(
            delivery, endpoint, None, UNDECRYPTABLE_ERROR, None, 0, receiver_failed=False
        )
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    status_code: int | None = None
    error = ""
    retry_after: float | None = None
    duration_ms = 0
    try:
        response = network.post(endpoint.url, body=body, headers=_headers(secrets_, delivery, body))
        status_code, duration_ms = response.status, response.duration_ms
        retry_after = _retry_after(response.headers) if status_code in (429, 503) else None
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}" + (
                " (redirects are not followed)" if 300 <= status_code < 400 else ""
            )
    except network.UnsafeURLError as exc:
        error = f"Refused: {exc}"
    except (TimeoutError, OSError, HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500] or "Connection failed"
    except SoftTimeLimitExceeded:
        # The task's own limit: logged as a failed try of this endpoint like a timeout, so the
        # delivery keeps its schedule and the endpoint its failure count.
        error = "The try ran past the task's time limit."
    return _record(delivery, endpoint, status_code, error, retry_after, duration_ms)


@transaction.atomic
def _record(
    delivery, endpoint, status_code, error, retry_after, duration_ms, *, receiver_failed=True
) -> str:
    """Log the try and schedule the next; only a receiver's failure counts against its endpoint.

    Returns "deleted" when the endpoint (and with it the delivery) was deleted during the try.
    """
    now = timezone.now()
    # The delivery first, then its endpoint: the order a cascading delete locks them in.
    present = WebhookDelivery.objects.select_for_update().filter(pk=delivery.pk).exists()
    endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint.pk).first()
    if endpoint is None or not present:
        logger.info(
            "Webhook delivery %s: its endpoint was deleted during the try; nothing recorded",
            delivery.pk,
            extra={"delivery_id": str(delivery.pk)},
        )
        return DELETED
    WebhookAttempt.objects.create(
        delivery=delivery,
        attempted_at=now,
        status_code=status_code,
        error=error,
        duration_ms=duration_ms,
    )
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.last_status_code = status_code
    delivery.last_error = error
    if not error:
        delivery.status = DeliveryStatus.SUCCEEDED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        delivery.save()
        if endpoint.consecutive_failures:
            endpoint.consecutive_failures = 0
            endpoint.failing_since = None
            endpoint.save(update_fields=["consecutive_failures", "failing_since", "updated_at"])
        return delivery.status

    if receiver_failed:
        endpoint.consecutive_failures += 1
        endpoint.failing_since = endpoint.failing_since or now
        endpoint.save(update_fields=["consecutive_failures", "failing_since", "updated_at"])
    if status_code == 410:
        _disable_and_notify(endpoint, "The endpoint answered 410 Gone.")
        delivery.status = DeliveryStatus.FAILED
        delivery.next_attempt_at = None
    elif delivery.attempts > len(settings.WEBHOOK_RETRY_SCHEDULE):
        delivery.status = DeliveryStatus.FAILED
        delivery.next_attempt_at = None
    else:
        delay = retry_delay(delivery.attempts)
        if retry_after is not None:
            delay = max(delay, min(retry_after, settings.WEBHOOK_MAX_RETRY_AFTER_SECONDS))
        delivery.next_attempt_at = now + timedelta(seconds=delay)
    delivery.save()
    if (
        receiver_failed
        and endpoint.is_active
        and endpoint.consecutive_failures >= settings.WEBHOOK_DISABLE_AFTER_FAILURES
        and now - endpoint.failing_since
        >= timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_SECONDS)
    ):
        _disable_and_notify(
            endpoint,
            f"{endpoint.consecutive_failures} consecutive failed deliveries since "
            f"{endpoint.failing_since:%Y-%m-%d %H:%M} UTC.",
        )
    return delivery.status


def _finish(delivery: WebhookDelivery, status: str, *, error: str) -> None:
    delivery.status = status
    delivery.last_error = error
    delivery.next_attempt_at = None
    # An UPDATE of nothing (deleted meanwhile) is fine: there is nothing left to finish.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=status, last_error=error, next_attempt_at=None, updated_at=timezone.now()
    )


def _disable_and_notify(endpoint: WebhookEndpoint, reason: str) -> None:
    """Disable the endpoint and queue an email to each owner and admin (in the outbox, in the
    caller's transaction)."""
    from apps.accounts.models import Membership, Role
    from apps.notifications.models import NotificationKind
    from apps.notifications.services import email_enqueue, unsubscribe_url, wants

    endpoint_disable(endpoint=endpoint, reason=reason, actor="system")
    logger.warning("Webhook endpoint %s disabled: %s", endpoint.pk, reason)
    admins = Membership.objects.filter(
        organisation_id=endpoint.organisation_id, role__in=[Role.OWNER, Role.ADMIN]
    ).select_related("user", "organisation")
    disabled_at = int(endpoint.disabled_at.timestamp()) if endpoint.disabled_at else 0
    for membership in admins:
        user = membership.user
        if not wants(user=user, kind=NotificationKind.WEBHOOK_ALERTS):
            continue
        context = {
            "organisation_name": membership.organisation.name,
            "endpoint_url": endpoint.url,
            "reason": reason,
            "endpoint_api_url": (
                f"{settings.PUBLIC_BASE_URL}/api/v1/webhooks/endpoints/{endpoint.pk}/"
            ),
            "unsubscribe_url": unsubscribe_url(user=user, kind=NotificationKind.WEBHOOK_ALERTS),
        }
        email_enqueue(
            template="webhook_disabled",
            to=[user.email],
            context=context,
            dedupe_key=f"webhook-disabled:{endpoint.pk}:{disabled_at}:{user.email}",
        )


def due_deliveries_take(*, limit: int = 1000) -> tuple[list[str], datetime]:
    """The deliveries whose time has come, marked as published: their `next_attempt_at` is moved
    `WEBHOOK_CLAIM_LEASE_SECONDS` ahead, to a mark their message carries (`_claim` accepts it).
    So while the webhooks queue is backed up (or its workers are down) the sweep publishes each
    delivery once per lease, not once per run: it added up to 1,000 copies every 15 s, filling
    the Redis the broker shares. A message that was lost is published again after the lease.
    Returns (ids, mark)."""
    now = timezone.now()
    mark = now + timedelta(seconds=settings.WEBHOOK_CLAIM_LEASE_SECONDS)
    with transaction.atomic():
        ids = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        WebhookDelivery.objects.filter(pk__in=ids).update(next_attempt_at=mark)
    return [str(pk) for pk in ids], mark
