"""An organisation's own retention of whole jobs (`Organisation.job_retention_days`).

Many organisations may keep a recording's transcript only as long as they need it (a GDPR
storage limit, a records policy). Their owners and admins set how many days after a job ends
it is deleted, with its transcript, revisions, reports and stored files, exactly as
`DELETE /api/v1/jobs/<id>` deletes it (`services.job_delete`: files after the commit, durably;
the live feed told). Jobs under legal hold are kept (`holds.py`); so are jobs still queued or
running. The hourly retention task runs this after the audio retention; each run records one
audit event per organisation (`retention.jobs_deleted`, the count and the first ids), since a
deletion by policy is still a deletion someone may have to account for.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.db import DatabaseError
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError

from . import services
from .models import FINAL_STATUSES, TranscriptionJob

logger = logging.getLogger(__name__)

# One run's time (hourly; the rest waits for the next run) and the ids named in its audit event.
BUDGET_SECONDS = 300.0
AUDITED_IDS = 100


def jobs_retention_cleanup(*, now=None, budget_seconds: float = BUDGET_SECONDS) -> int:
    """Delete the jobs past their organisation's `job_retention_days`; returns how many."""
    from apps.accounts.models import Organisation

    now = now or timezone.now()
    started = time.monotonic()
    total = 0
    policies = Organisation.objects.filter(job_retention_days__isnull=False).values_list(
        "pk", "job_retention_days"
    )
    for organisation_id, policy in policies:
        days = int(policy or 0)  # never null here (filtered), typed as nullable
        expired = (
            TranscriptionJob.objects.filter(
                organisation_id=organisation_id,
                status__in=FINAL_STATUSES,
                legal_hold_at__isnull=True,
                finished_at__lt=now - timedelta(days=days),
            )
            .order_by("finished_at")
            .only("pk", "organisation_id")
        )
        deleted: list[str] = []
        for job in expired[:5000]:
            try:
                services.job_delete(job=job)
            except ApplicationError:  # held since it was listed
                pass
            except DatabaseError:
                logger.warning("Job retention: could not delete job %s", job.pk, exc_info=True)
            else:
                deleted.append(str(job.pk))
            if time.monotonic() - started > budget_seconds:  # at least one job a run
                break
        if deleted:
            _audit(organisation_id, days, deleted)
            total += len(deleted)
        if time.monotonic() - started > budget_seconds:
            logger.info("Job retention: out of time; the next run goes on")
            break
    if total:
        logger.info("Job retention: deleted %d jobs", total)
    return total


def _audit(organisation_id, days: int, deleted: list[str]) -> None:
    from apps.accounts.models import Organisation

    organisation = Organisation.objects.filter(pk=organisation_id).first()
    if organisation is None:
        return
    audit_record(
        action=AuditAction.RETENTION_JOBS_DELETED,
        actor="system",
        organisation=organisation,
        target=organisation,
        metadata={
            "job_retention_days": days,
            "count": len(deleted),
            "job_ids": deleted[:AUDITED_IDS],
        },
    )
