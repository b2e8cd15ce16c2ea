"""Tasks of the email queue.

`send_email` renders `templates/emails/<template>.subject.txt`, `.txt` and (if present) `.html`
with a context of plain values and sends one message. Services enqueue it after commit; it takes
only strings, lists and dicts, so a message can be retried or requeued from the dead-letter
store as is.
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

from .base import TRANSIENT_EXCEPTIONS, LexisTask

logger = logging.getLogger(__name__)

_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
# How long a sent message's dedupe key is remembered (a redelivered message is not sent twice).
DEDUPE_SECONDS = 7 * 24 * 3600

SMTP_TRANSIENT: tuple[type[BaseException], ...] = (
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    smtplib.SMTPHeloError,
)


class EmailTemplateError(ValueError):
    """The template name is malformed or its files are missing (never worth a retry)."""


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


@shared_task(
    name="workers.emails.send_email",
    base=LexisTask,
    autoretry_for=(*TRANSIENT_EXCEPTIONS, *SMTP_TRANSIENT),
)
def send_email(
    template: str,
    to: list[str] | str,
    context: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> int:
    """Send one templated email; returns the number of messages sent (0 when deduplicated)."""
    recipients = [to] if isinstance(to, str) else list(to)
    if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise EmailTemplateError(f"Bad recipients: {recipients!r}")
    cache_key = f"email-sent:{dedupe_key}" if dedupe_key else None
    if cache_key and cache.get(cache_key):
        logger.info("Email %s already sent (%s); skipping", template, dedupe_key)
        return 0
    subject, text, html = render_email(template, context or {})
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers=list_unsubscribe_headers((context or {}).get("unsubscribe_url")),
    )
    if html is not None:
        message.attach_alternative(html, "text/html")
    sent = message.send()
    if cache_key:
        cache.set(cache_key, 1, timeout=DEDUPE_SECONDS)
    logger.info("Email %s sent", template, extra={"email_template": template})
    return sent
