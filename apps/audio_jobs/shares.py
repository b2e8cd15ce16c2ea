"""Share links: a read-only link to one transcript for someone without an account (a client, a
court reporter, a colleague in another organisation).

- Members and up (and their API keys) make one for a completed job: `POST
  /api/v1/jobs/<id>/shares` answers the link once (`/api/v1/shared/lxs_...`); only the token's
  sha256 is stored, so a database dump holds no usable link. Every link expires (at most
  `SHARE_LINK_MAX_DAYS`, default 7 days) and can be revoked; a job has at most
  `SHARE_LINKS_PER_JOB` live links.
- Opening one needs nothing else: the current revision of the transcript (the stored one:
  redacted when the job asked for it), as JSON or txt/srt/vtt. An unknown, expired or revoked
  link, a job no longer completed, or an organisation that was deactivated or switched sharing
  off (`share_links_enabled`) all answer the same 404, so the answer says nothing about which.
  Each use is counted on the link and audited (`transcript.share_accessed`, with the client's
  address): who saw a transcript is a question an organisation must be able to answer.
- Deleting the job deletes its links. Tokens are masked in logs (apps/core/logging.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError
from apps.core.metrics import SHARE_LINK_USES

from . import selectors
from .models import JobStatus, TranscriptShare

TOKEN_PREFIX = "lxs_"  # noqa: S105 - a marker, not a secret
TOKEN_PATTERN = re.compile(r"^lxs_[A-Za-z0-9_-]{43}$")


class SharingDisabled(ApplicationError):
    status_code = 403
    code = "sharing_disabled"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def share_url(token: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}/api/v1/shared/{token}"


def share_create(
    *,
    organisation,
    job_id: Any,
    user,
    api_key: Any = None,
    expires_in_days: int,
    note: str = "",
    meta: Any = None,
) -> tuple[TranscriptShare, str]:
    """Make a link to a completed job's transcript; returns (share, token). The token is shown
    this once. 403 `sharing_disabled`, 404, 409 `transcript_not_ready` or `too_many_shares`."""
    if not organisation.share_links_enabled:
        raise SharingDisabled(
            "This organisation does not allow share links (an admin can turn them on)."
        )
    with transaction.atomic():
        job = selectors.job_for_update(organisation=organisation, job_id=job_id)
        if job.status != JobStatus.COMPLETED:
            raise ConflictError(
                f"The job is {job.status}; a transcript can be shared once it is completed.",
                code="transcript_not_ready",
            )
        now = timezone.now()
        live = job.shares.filter(revoked_at__isnull=True, expires_at__gt=now).count()
        if live >= settings.SHARE_LINKS_PER_JOB:
            raise ConflictError(
                f"This job has {live} live share links, the most it may have: revoke one first.",
                code="too_many_shares",
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        share = TranscriptShare.objects.create(
            organisation=organisation,
            job=job,
            api_key=api_key,
            created_by=(
                user
                if api_key is None and getattr(user, "pk", None) and user.is_authenticated
                else None
            ),
            token_hash=_hash(token),
            token_prefix=token[: len(TOKEN_PREFIX) + 6],
            note=note,
            expires_at=now + timedelta(days=expires_in_days),
        )
        audit_record(
            action=AuditAction.TRANSCRIPT_SHARED,
            actor=user,
            api_key=api_key,
            organisation=organisation,
            target=share,
            target_repr=f"Share {share.token_prefix}… of job {job.pk}",
            meta=meta,
            metadata={
                "job_id": str(job.pk),
                "share_id": str(share.pk),
                "expires_at": share.expires_at.isoformat(),
            },
        )
    return share, token


def share_list(*, organisation, job_id: Any) -> QuerySet[TranscriptShare]:
    job = selectors.job_get(organisation=organisation, job_id=job_id)
    return job.shares.select_related("created_by").order_by("-created_at")


@transaction.atomic
def share_revoke(
    *, organisation, job_id: Any, share_id: Any, user, api_key: Any = None, meta: Any = None
) -> TranscriptShare:
    """Revoke a link (at once: the next use is 404). Revoking a revoked one changes nothing."""
    share = (
        TranscriptShare.objects.select_for_update(of=("self",))
        .select_related("organisation")
        .filter(organisation=organisation, job_id=job_id, pk=share_id)
        .first()
    )
    if share is None:
        raise NotFoundError("No such share link.", code="share_not_found")
    if share.revoked_at is None:
        _revoke(share, actor=user, api_key=api_key, meta=meta)
    return share


def _revoke(share: TranscriptShare, *, actor: Any, api_key: Any, meta: Any, **why: str) -> None:
    share.revoked_at = timezone.now()
    share.save(update_fields=["revoked_at"])
    audit_record(
        action=AuditAction.TRANSCRIPT_SHARE_REVOKED,
        actor=actor,
        api_key=api_key,
        organisation=share.organisation,
        target=share,
        target_repr=f"Share {share.token_prefix}… of job {share.job_id}",
        meta=meta,
        metadata={"job_id": str(share.job_id), "share_id": str(share.pk), **why},
    )


def shares_revoke_of(
    *,
    user: Any = None,
    api_keys: list[Any] | None = None,
    organisation_id: Any = None,
    actor: Any,
    reason: str,
    meta: Any = None,
) -> int:
    """Revoke the live links a departing member made (in one organisation, or all), or that
    revoked API keys made: a link must not outlive the access of whoever shared it. Each is
    audited (`transcript.share_revoked`, with the reason). Returns how many."""
    if user is None and not api_keys:
        return 0
    shares = TranscriptShare.objects.select_for_update(of=("self",)).filter(revoked_at__isnull=True)
    if user is not None:
        shares = shares.filter(created_by=user)
    else:
        shares = shares.filter(api_key__in=list(api_keys or []))
    if organisation_id is not None:
        shares = shares.filter(organisation_id=organisation_id)
    revoked = list(shares.select_related("organisation").order_by("pk"))
    for share in revoked:
        _revoke(share, actor=actor, api_key=None, meta=meta, reason=reason)
    return len(revoked)


def shared_job(*, token: str, meta: Any = None, count: bool = True) -> TranscriptShare:
    """The live share behind `token`, its use counted and audited (unless `count` is False: a
    HEAD request, a link preview's probe); 404 `share_not_found` otherwise, whatever the
    reason."""
    gone = NotFoundError(
        "This link is not valid: it may have expired or been revoked. Ask for a new one.",
        code="share_not_found",
    )
    if not TOKEN_PATTERN.match(token):
        if count:  # a HEAD counts as neither
            SHARE_LINK_USES.labels("refused").inc()
        raise gone
    now = timezone.now()
    share = (
        TranscriptShare.objects.select_related("job", "organisation")
        .filter(
            token_hash=_hash(token),
            revoked_at__isnull=True,
            expires_at__gt=now,
            organisation__is_active=True,
            organisation__share_links_enabled=True,
            job__status=JobStatus.COMPLETED,
        )
        .first()
    )
    if share is None:
        if count:
            SHARE_LINK_USES.labels("refused").inc()
        raise gone
    if not count:
        return share
    SHARE_LINK_USES.labels("served").inc()
    TranscriptShare.objects.filter(pk=share.pk).update(
        access_count=F("access_count") + 1, last_accessed_at=now
    )
    audit_record(
        action=AuditAction.TRANSCRIPT_SHARE_ACCESSED,
        actor=None,
        organisation=share.organisation,
        target=share,
        target_repr=f"Share {share.token_prefix}… of job {share.job_id}",
        meta=meta,
        metadata={"job_id": str(share.job_id), "share_id": str(share.pk)},
    )
    return share
