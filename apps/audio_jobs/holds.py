"""Legal hold: a job kept exactly as it is while litigation, an investigation or an audit needs
it, whatever would otherwise delete it.

While a job is held:
- `DELETE /jobs/<id>` (and the admin's delete) is refused: 409 `legal_hold`;
- audio retention skips it (`apps.core.maintenance.audio_retention_cleanup`): its audio stays;
- the organisation cannot be deleted (`organisation_delete` refuses; the admin says why).
Everything that never destroys data goes on: reading, exporting, editing (every revision is kept
and the machine output can always be rebuilt), transcribing again (a new job).

Owners and admins place and release holds (people, not API keys: a hold is a legal decision);
each is an audit event with its reason. Placing a hold on a held job changes nothing (200, no new
event): the first hold's time and reason are what a court would ask for.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ConflictError

from . import selectors
from .models import TranscriptionJob


class LegalHold(ConflictError):
    code = "legal_hold"


def refuse_if_held(job: TranscriptionJob) -> None:
    """Raise 409 `legal_hold` for a held job (call it on the locked row)."""
    if job.legal_hold_at is not None:
        raise LegalHold(
            "This job is under legal hold: it cannot be deleted until an admin releases the "
            "hold (DELETE /api/v1/jobs/<id>/legal-hold).",
            details={"job_id": str(job.pk), "legal_hold_at": job.legal_hold_at.isoformat()},
        )


def held_jobs_count(*, organisation_id: Any) -> int:
    return TranscriptionJob.objects.filter(
        organisation_id=organisation_id, legal_hold_at__isnull=False
    ).count()


@transaction.atomic
def legal_hold_place(
    *, organisation, job_id: Any, user, reason: str, meta: Any = None
) -> tuple[TranscriptionJob, bool]:
    """Hold a job; returns (job, placed): False when it was already held (nothing changes)."""
    job = selectors.job_for_update(organisation=organisation, job_id=job_id)
    if job.legal_hold_at is not None:
        return job, False
    job.legal_hold_at = timezone.now()
    job.legal_hold_by = user
    job.legal_hold_reason = reason
    job.save(update_fields=["legal_hold_at", "legal_hold_by", "legal_hold_reason", "updated_at"])
    audit_record(
        action=AuditAction.JOB_LEGAL_HOLD_PLACED,
        actor=user,
        organisation=organisation,
        target=job,
        target_repr=f"Job {job.pk}",
        meta=meta,
        metadata={"job_id": str(job.pk), "reason": reason},
    )
    return job, True


@transaction.atomic
def legal_hold_release(
    *, organisation, job_id: Any, user, reason: str = "", meta: Any = None
) -> TranscriptionJob:
    """Release a job's hold (a job that is not held: 409 `not_held`). Retention then deletes
    its audio at its next run if the audio is past its time."""
    job = selectors.job_for_update(organisation=organisation, job_id=job_id)
    if job.legal_hold_at is None:
        raise ConflictError("This job is not under legal hold.", code="not_held")
    placed_at, placed_reason = job.legal_hold_at, job.legal_hold_reason
    job.legal_hold_at, job.legal_hold_by, job.legal_hold_reason = None, None, ""
    job.save(update_fields=["legal_hold_at", "legal_hold_by", "legal_hold_reason", "updated_at"])
    audit_record(
        action=AuditAction.JOB_LEGAL_HOLD_RELEASED,
        actor=user,
        organisation=organisation,
        target=job,
        target_repr=f"Job {job.pk}",
        meta=meta,
        metadata={
            "job_id": str(job.pk),
            "reason": reason,
            "held_since": placed_at.isoformat(),
            "hold_reason": placed_reason,
        },
    )
    return job
