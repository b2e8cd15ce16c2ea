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

from django.db import DatabaseError, transaction
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError
from apps.core.metrics import RETENTION_DELETIONS

from . import services
from .models import FINAL_STATUSES, TranscriptionJob

logger = logging.getLogger(__name__)

# One run's time (hourly, inside the retention task's 570 s soft limit beside its other sweeps;
# the rest waits for the next run) and the ids named in its audit event.
BUDGET_SECONDS = 90.0
AUDITED_IDS = 100


def jobs_retention_cleanup(*, now=None, budget_seconds: float = BUDGET_SECONDS) -> int:
    """Delete the jobs past their organisation's `job_retention_days`; returns how many.

    Organisations take turns: each run starts with the next one after where the previous run's
    hour left off, so one organisation's backlog cannot take every run's time. A job is checked
    again under its lock before it is deleted (retried, held or deleted since it was listed)."""
    from apps.accounts.models import Organisation

    now = now or timezone.now()
    deadline = time.monotonic() + budget_seconds
    total = 0
    policies = list(
        Organisation.objects.filter(job_retention_days__isnull=False)
        .order_by("pk")
        .values_list("pk", "job_retention_days")
    )
    if not policies:
        return 0
    turn = int(now.timestamp() // 3600) % len(policies)
    for organisation_id, policy in policies[turn:] + policies[:turn]:
        days = int(policy or 0)  # never null here (filtered), typed as nullable
        deleted = _delete_expired(organisation_id, now - timedelta(days=days), deadline, days)
        total += deleted
        if time.monotonic() > deadline:
            logger.info("Job retention: out of time; the next run goes on")
            break
    if total:
        logger.info("Job retention: deleted %d jobs", total)
    return total


def _delete_expired(organisation_id, cutoff, deadline: float, days: int) -> int:
    """Delete one organisation's expired jobs until the deadline (at least one), each in its
    own transaction; the audit event is written whatever stops the loop."""
    expired = TranscriptionJob.objects.filter(
        organisation_id=organisation_id,
        status__in=FINAL_STATUSES,
        legal_hold_at__isnull=True,
        finished_at__lt=cutoff,
    )
    deleted: list[str] = []
    try:
        for job_id in expired.order_by("finished_at").values_list("pk", flat=True)[:5000]:
            try:
                with transaction.atomic():
                    locked = expired.select_for_update().filter(pk=job_id).first()
                    if locked is not None:
                        services.job_delete(job=locked)
                        deleted.append(str(job_id))
            except ApplicationError:  # held between the two reads
                pass
            except DatabaseError:
                logger.warning("Job retention: could not delete job %s", job_id, exc_info=True)
            if time.monotonic() > deadline:
                break
    finally:
        if deleted:
            RETENTION_DELETIONS.labels("job").inc(len(deleted))
            _audit(organisation_id, days, deleted)
    return len(deleted)


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
