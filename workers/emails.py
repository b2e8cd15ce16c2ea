"""Tasks of the email queue.

`send_email` renders `templates/emails/<template>.subject.txt`, `.txt` and (if present) `.html`
with a context of plain values and sends one message. Services queue emails in the outbox
(`apps.notifications.services.email_enqueue`), and the task takes the queued email's id:
`send_email(outbox_id=...)`. The old form, `send_email(template, to, context, dedupe_key)`, is
still accepted for messages already in the queue or in the dead-letter store. `send_due_emails`
(beat) publishes what the outbox still holds.
"""

from __future__ import annotations

import logging
import re
import smtplib
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.core.mail import EmailMultiAlternatives
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string

from apps.notifications import services as outbox

from .base import TRANSIENT_EXCEPTIONS, LexisTask

logger = logging.getLogger(__name__)

_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
# How long a sent message's dedupe key is remembered (a redelivered message is not sent twice).
DEDUPE_SECONDS = outbox.EMAIL_DEDUPE_SECONDS

SMTP_TRANSIENT: tuple[type[BaseException], ...] = (
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    smtplib.SMTPHeloError,
)


class EmailTemplateError(ValueError):
    """The template name is malformed or its files are missing (never worth a retry)."""


class EmailNotSent(Exception):
    """A queued email failed for good (dead-lettered; its outbox row is `failed`)."""


def render_email(template: str, context: dict[str, Any]) -> tuple[str, str, str | None]:
    """Return (subject, text body, html body or None)."""
    if not _TEMPLATE_NAME.match(template or ""):
        raise EmailTemplateError(f"Bad email template name: {template!r}")
    context = {"public_base_url": settings.PUBLIC_BASE_URL, **context}
    try:
        subject = render_to_string(f"emails/{template}.subject.txt", context)
        text = render_to_string(f"emails/{template}.txt", context)
    except TemplateDoesNotExist as exc:
        raise EmailTemplateError(f"Missing email template: {exc}") from exc
    try:
        html: str | None = render_to_string(f"emails/{template}.html", context)
    except TemplateDoesNotExist:
        html = None
    # A subject is one line: a template or a value must never inject headers.
    return " ".join(subject.split())[:250], text, html


def list_unsubscribe_headers(url: Any) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers for mail that carries an unsubscribe link (non-essential mail:
    job, report, weekly-usage and webhook alerts), so mail clients offer one-click unsubscribe and
    large mailbox providers accept bulk mail. The link is our signed URL; it answers both GET and
    the one-click POST. Anything but a plain https/http URL is left out rather than risk a header.
    """
    if not isinstance(url, str) or not re.fullmatch(r"https?://[!-~]{1,2000}", url):
        return {}
    if any(char in url for char in "<>,"):
        return {}
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def _is_permanent(exc: BaseException) -> bool:
    """A failure that another try will not mend: a bad template, refused recipients, a 5xx."""
    if isinstance(exc, EmailTemplateError | smtplib.SMTPRecipientsRefused):
        return True
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def _deliver(template: str, recipients: list[str], context: dict[str, Any]) -> int:
    subject, text, html = render_email(template, context)
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers=list_unsubscribe_headers(context.get("unsubscribe_url")),
    )
    if html is not None:
        message.attach_alternative(html, "text/html")
    return message.send()


@shared_task(
    name="workers.emails.send_email",
    base=LexisTask,
    autoretry_for=(*TRANSIENT_EXCEPTIONS, *SMTP_TRANSIENT),
)
def send_email(
    template: str | None = None,
    to: list[str] | str | None = None,
    context: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    outbox_id: str | None = None,
) -> int:
    """Send one email; returns the number of messages sent (0 when deduplicated or deferred)."""
    if outbox_id is not None:
        return _send_queued(str(outbox_id))
    recipients = [to] if isinstance(to, str) else list(to or [])
    if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise EmailTemplateError(f"Bad recipients: {recipients!r}")
    cache_key = f"email-sent:{dedupe_key}" if dedupe_key else None
    if cache_key and cache.get(cache_key):
        logger.info("Email %s already sent (%s); skipping", template, dedupe_key)
        return 0
    sent = _deliver(str(template), recipients, context or {})
    if cache_key:
        cache.set(cache_key, 1, timeout=DEDUPE_SECONDS)
    logger.info("Email %s sent", template, extra={"email_template": template})
    return sent


def _send_queued(outbox_id: str) -> int:
    """One try of a queued email. A transient failure is tried again by the outbox sweep after a
    backoff (not by a Celery retry); the last one, or a permanent one, fails it and raises."""
    email = outbox.email_claim(outbox_id=outbox_id)
    if email is None:
        logger.info("Queued email %s is sent, gone or being sent; skipping", outbox_id)
        return 0
    # Set right after SMTP accepted the message: if marking the row sent fails, the next try
    # finds it and does not send a second copy.
    sent_key = f"email-sent:outbox:{email.pk}"
    if cache.get(sent_key):
        outbox.email_mark_sent(outbox_id=outbox_id)
        return 0
    try:
        sent = _deliver(email.template, list(email.recipients), dict(email.context))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        retried = outbox.email_record_failure(
            email=email, error=error, retry=not _is_permanent(exc)
        )
        if retried:
            logger.warning(
                "Email %s (%s) not sent, try %d; it will be tried again: %s",
                email.template,
                outbox_id,
                email.attempts,
                error,
                extra={"email_template": email.template, "outbox_id": outbox_id},
            )
            return 0
        raise EmailNotSent(f"Email {email.template} ({outbox_id}) failed: {error}") from exc
    try:
        cache.set(sent_key, 1, timeout=DEDUPE_SECONDS)
    except Exception:
        logger.warning("Could not remember email %s as sent in the cache", outbox_id, exc_info=True)
    outbox.email_mark_sent(outbox_id=outbox_id)
    logger.info(
        "Email %s sent",
        email.template,
        extra={"email_template": email.template, "outbox_id": outbox_id},
    )
    return sent


@shared_task(name="workers.emails.send_due_emails", base=LexisTask, max_retries=0)
def send_due_emails() -> int:
    """Publish every queued email still pending past its `next_try_at` (beat)."""
    return outbox.email_outbox_sweep()
