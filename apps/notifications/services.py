"""Notification preferences, signed unsubscribe links and the email outbox."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.core.exceptions import ApplicationError

from .models import EmailOutbox, EmailStatus, NotificationKind, NotificationPreference

logger = logging.getLogger(__name__)

_SALT = "lexiscore.notifications.unsubscribe"


def wants(*, user, kind: str) -> bool:
    """Whether `user` receives mail of `kind` (on unless they turned it off)."""
    if user is None or not user.is_active or not user.email:
        return False
    preference = NotificationPreference.objects.filter(user=user).first()
    return True if preference is None else bool(getattr(preference, kind))


def preference_get(*, user) -> NotificationPreference:
    preference, _ = NotificationPreference.objects.get_or_create(user=user)
    return preference


def preference_update(*, user, changes: dict[str, bool]) -> NotificationPreference:
    preference = preference_get(user=user)
    for kind, enabled in changes.items():
        if kind not in NotificationKind.values:
            raise ApplicationError(f"Unknown notification kind: {kind}", code="invalid_kind")
        setattr(preference, kind, bool(enabled))
    preference.save()
    return preference


def unsubscribe_token(*, user, kind: str) -> str:
    return signing.dumps({"u": str(user.public_id), "k": kind}, salt=_SALT, compress=True)


def unsubscribe_url(*, user, kind: str) -> str:
    query = urlencode({"token": unsubscribe_token(user=user, kind=kind)})
    return f"{settings.PUBLIC_BASE_URL}/api/v1/notifications/unsubscribe?{query}"


def unsubscribe(*, token: str) -> NotificationPreference:
    """Turn off the kind named by a signed link (links stay valid: unsubscribing is idempotent)."""
    from apps.accounts.models import User

    try:
        data = signing.loads(token, salt=_SALT)
        user = User.objects.get(public_id=data["u"])
        kind = data["k"]
    except (signing.BadSignature, User.DoesNotExist, KeyError, TypeError, ValueError):
        raise ApplicationError(
            "This unsubscribe link is invalid.", code="invalid_unsubscribe_token"
        ) from None
    return preference_update(user=user, changes={kind: False})


# ---- Email outbox -------------------------------------------------------------------------------
# How long a sent email's dedupe key is kept (a second enqueue with the key sends nothing).
EMAIL_DEDUPE_SECONDS = 7 * 24 * 3600
# Tries of one email that failed transiently wait 1 min, 2, 4 ... up to 1 h (+-20 % jitter).
EMAIL_RETRY_BASE_SECONDS = 60
EMAIL_RETRY_MAX_SECONDS = 3600


def email_enqueue(
    *,
    template: str,
    to: str | Iterable[str],
    context: dict[str, Any] | None = None,
    dedupe_key: str = "",
    headers: dict[str, str] | None = None,
) -> EmailOutbox | None:
    """Queue one templated email in the caller's transaction; it is published after commit.

    A rolled-back transaction queues nothing; a committed one sends the email even if the broker
    is down at commit (the beat sweep publishes what is still pending). A `dedupe_key` already
    queued returns that row and queues nothing. Never raises for bad recipients (the caller's
    transaction is finishing something more important): it logs and returns None.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
        logger.error("Email %s not queued: bad recipients %r", template, recipients)
        return None
    if dedupe_key:
        existing = EmailOutbox.objects.filter(dedupe_key=dedupe_key).first()
        if existing is not None:
            logger.info("Email %s already queued (%s)", template, dedupe_key)
            return existing
    row = EmailOutbox(
        template=template,
        recipients=recipients,
        context=context or {},
        dedupe_key=dedupe_key,
        next_try_at=timezone.now() + timedelta(seconds=settings.EMAIL_OUTBOX_RESEND_AFTER_SECONDS),
    )
    try:
        with transaction.atomic():
            row.save(force_insert=True)
    except IntegrityError:
        if not dedupe_key:
            raise
        # A concurrent transaction queued the same key and committed first.
        return EmailOutbox.objects.get(dedupe_key=dedupe_key)
    outbox_id = str(row.pk)
    transaction.on_commit(lambda: email_publish(outbox_id=outbox_id, headers=headers), robust=True)
    return row


def email_publish(*, outbox_id: str, headers: dict[str, str] | None = None) -> bool:
    """Ask the email queue to send a queued email; False (logged) when the broker refused."""
    from workers.emails import send_email

    try:
        send_email.apply_async(kwargs={"outbox_id": outbox_id}, headers=headers or None)
    except Exception:
        logger.warning(
            "Email %s not published; the outbox sweep will publish it again",
            outbox_id,
            exc_info=True,
            extra={"outbox_id": outbox_id},
        )
        return False
    return True


def email_claim(*, outbox_id: str) -> EmailOutbox | None:
    """Take a queued email for one try; None when it is sent, gone or held by another try.

    A `failed` email is taken too: only an operator's requeue (of its dead letter, or the admin
    action) publishes it again, and that means one more try.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=settings.EMAIL_OUTBOX_RESEND_AFTER_SECONDS)
    claimed = (
        EmailOutbox.objects.filter(
            pk=outbox_id, status__in=[EmailStatus.PENDING, EmailStatus.FAILED]
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
        .update(
            status=EmailStatus.PENDING,
            attempts=F("attempts") + 1,
            claimed_until=lease,
            next_try_at=lease,
        )
    )
    return EmailOutbox.objects.filter(pk=outbox_id).first() if claimed else None


def email_mark_sent(*, outbox_id: str) -> None:
    """Mark it sent and drop its context: links with tokens (password reset, unsubscribe) are not
    kept once they have left."""
    EmailOutbox.objects.filter(pk=outbox_id).update(
        status=EmailStatus.SENT,
        sent_at=timezone.now(),
        claimed_until=None,
        last_error="",
        context={},
    )


def email_retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` tries failed."""
    base = min(EMAIL_RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0), EMAIL_RETRY_MAX_SECONDS)
    return base * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not a secret)


def email_record_failure(*, email: EmailOutbox, error: str, retry: bool) -> bool:
    """Record a failed try: tried again after a backoff while tries remain (returns True), else
    `failed` (returns False)."""
    now = timezone.now()
    if retry and email.attempts < settings.EMAIL_OUTBOX_MAX_ATTEMPTS:
        # Held until the retry is due: a duplicate message does not jump the backoff.
        due = now + timedelta(seconds=email_retry_delay(email.attempts))
        EmailOutbox.objects.filter(pk=email.pk).update(
            status=EmailStatus.PENDING, next_try_at=due, claimed_until=due, last_error=error[:500]
        )
        return True
    EmailOutbox.objects.filter(pk=email.pk).update(
        status=EmailStatus.FAILED, claimed_until=None, last_error=error[:500]
    )
    return False


def email_requeue(*, outbox_ids: Iterable[str]) -> int:
    """Send failed emails again (an operator's action after fixing the cause): one more try each."""
    ids = [
        str(pk)
        for pk in EmailOutbox.objects.filter(
            pk__in=list(outbox_ids), status=EmailStatus.FAILED
        ).values_list("pk", flat=True)
    ]
    return sum(email_publish(outbox_id=pk) for pk in ids)


def _fail_exhausted(*, now, limit: int) -> int:
    """Fail emails whose every try was claimed and never ended (a worker killed while sending,
    each time): without this they would be published again every resend interval, for ever.
    Each gets a dead letter (`dead_letters requeue` gives it one more try) and an ERROR line."""
    from apps.core.services import dead_letter_record

    exhausted = EmailOutbox.objects.filter(
        status=EmailStatus.PENDING,
        next_try_at__lte=now,
        attempts__gte=settings.EMAIL_OUTBOX_MAX_ATTEMPTS,
    ).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
    failed = 0
    for pk, template, attempts in list(exhausted.values_list("pk", "template", "attempts")[:limit]):
        error = f"{attempts} tries were started and none finished (the worker stopped each time)."
        with transaction.atomic():
            # The whole condition again: a row a worker claimed since the listing is left alone.
            if not exhausted.filter(pk=pk).update(
                status=EmailStatus.FAILED, claimed_until=None, last_error=error
            ):
                continue
            dead_letter_record(
                task_name="workers.emails.send_email",
                task_id=f"outbox-exhausted:{pk}",
                queue="email",
                args=[],
                kwargs={"outbox_id": str(pk)},
                exception_type="workers.emails.EmailNotSent",
                error=error,
                attempts=attempts,
            )
        failed += 1
        logger.error("Email %s (%s) failed: %s", template, pk, error, extra={"outbox_id": str(pk)})
    return failed


def email_outbox_sweep(*, limit: int = 500) -> int:
    """Publish every pending email whose `next_try_at` has come; purge old sent ones.

    Returns the number published. Each is moved `EMAIL_OUTBOX_RESEND_AFTER_SECONDS` ahead first,
    so a slow queue is not flooded with copies of the same email (a copy is skipped by the claim).
    """
    now = timezone.now()
    _fail_exhausted(now=now, limit=limit)
    ids = [
        str(pk)
        for pk in EmailOutbox.objects.filter(status=EmailStatus.PENDING, next_try_at__lte=now)
        .order_by("next_try_at")
        .values_list("pk", flat=True)[:limit]
    ]
    if ids:
        EmailOutbox.objects.filter(pk__in=ids, status=EmailStatus.PENDING).update(
            next_try_at=now + timedelta(seconds=settings.EMAIL_OUTBOX_RESEND_AFTER_SECONDS)
        )
        logger.info("Publishing %d pending email(s) from the outbox", len(ids))
    published = sum(email_publish(outbox_id=pk) for pk in ids)
    old = EmailOutbox.objects.filter(
        status=EmailStatus.SENT, sent_at__lt=now - timedelta(seconds=EMAIL_DEDUPE_SECONDS)
    ).values_list("pk", flat=True)[:5000]
    EmailOutbox.objects.filter(pk__in=list(old)).delete()
    return published
