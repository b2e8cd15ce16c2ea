"""What happens after a job reaches a final state: notifications, each on its own queue.

Called inside the transaction that finished the job. Webhook deliveries (`job.completed` /
`job.failed`, one per subscribed active endpoint) and the email to the job's creator (unless they
turned job emails off, in the email outbox) are written in that same transaction, so a
rolled-back finish notifies nobody and a committed one notifies exactly once. Their tasks are
published after commit, each on its own and never raising into the task that finished the job:
what a broker blip fails to publish, beat's sweeps (`send_due_deliveries`, `send_due_emails`)
publish later.
"""

from __future__ import annotations

from django.conf import settings

from .models import JobStatus, TranscriptionJob
from .quality import quality_summary

TEMPLATES: dict[str, str] = {JobStatus.COMPLETED: "job_completed", JobStatus.FAILED: "job_failed"}
WEBHOOK_EVENTS: dict[str, str] = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
}


FEED_EVENTS: dict[str, str] = {
    JobStatus.QUEUED: "job.queued",
    JobStatus.PROCESSING: "job.processing",
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


def job_finished(job: TranscriptionJob) -> None:
    _publish_webhooks(job)
    _send_email(job)


def job_changed(job: TranscriptionJob) -> None:
    """Announce the job's new status on the live feed (in the transaction that changed it)."""
    from apps.feed.services import feed_publish

    feed_publish(
        organisation_id=job.organisation_id,
        type=FEED_EVENTS[job.status],
        subject_id=job.pk,
        data={**_job_data(job), "progress": job.progress},
    )


def job_progressed(job: TranscriptionJob, percent: float) -> None:
    from apps.feed.services import feed_publish

    feed_publish(
        organisation_id=job.organisation_id,
        type="job.progress",
        subject_id=job.pk,
        data={"job_id": str(job.pk), "status": JobStatus.PROCESSING, "progress": percent},
    )


def job_deleted(*, job_id, organisation_id) -> None:
    from apps.feed.services import feed_publish

    feed_publish(
        organisation_id=organisation_id,
        type="job.deleted",
        subject_id=job_id,
        data={"job_id": str(job_id)},
    )


def transcript_revised(*, job: TranscriptionJob, revision, edited_at) -> None:
    """Announce an edit or revert of the job's transcript (in its transaction), so that open
    clients load it again. The text itself is not in the event."""
    from apps.feed.services import feed_publish

    feed_publish(
        organisation_id=job.organisation_id,
        type="transcript.reverted" if revision.reverted_to is not None else "transcript.edited",
        subject_id=job.pk,
        data={
            "job_id": str(job.pk),
            "revision": revision.revision,
            "reverted_to": revision.reverted_to,
            "segment_ids": revision.segment_ids,
            "edited_at": edited_at.isoformat(),
            "transcript_url": f"{settings.PUBLIC_BASE_URL}/api/v1/jobs/{job.pk}/transcript",
        },
    )


def _job_data(job: TranscriptionJob) -> dict:
    return {
        "job_id": str(job.pk),
        "status": job.status,
        "filename": job.original_filename,
        "duration_seconds": job.duration_seconds,
        "language": job.language,
        "model": job.model_used,
        "processing_seconds": job.processing_seconds,
        "error_code": job.error_code or None,
        "error_message": job.error_message or None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "job_url": f"{settings.PUBLIC_BASE_URL}/api/v1/jobs/{job.pk}",
        # The automatic checks (null until completed): the warnings' count and every flag's code.
        "quality_warnings": job.quality_warnings,
        "quality_flags": _flag_codes(job.quality),
        # PII redaction (null when none was asked): spans redacted per entity type.
        "pii_redacted": job.redaction.get("entities") if isinstance(job.redaction, dict) else None,
        # Diarization (null when not asked or when it failed): each speaker's label and time.
        "speakers": _speakers(job),
    }


def _speakers(job: TranscriptionJob) -> list[dict] | None:
    if not isinstance(job.diarization, dict) or "speakers" not in job.diarization:
        return None
    return [
        {"id": str(item.get("id")), "seconds": item.get("seconds")} for item in job.speakers_found()
    ]


def _flag_codes(quality) -> list[str] | None:
    if not isinstance(quality, dict):
        return None
    return [str(flag.get("code")) for flag in quality.get("flags") or () if isinstance(flag, dict)]


def _publish_webhooks(job: TranscriptionJob) -> None:
    from apps.webhooks.services import event_publish

    event_type = WEBHOOK_EVENTS.get(job.status)
    if event_type is not None:
        event_publish(organisation=job.organisation, event_type=event_type, data=_job_data(job))


def _send_email(job: TranscriptionJob) -> None:
    from apps.notifications.models import NotificationKind
    from apps.notifications.services import email_enqueue, unsubscribe_url, wants

    template = TEMPLATES.get(job.status)
    user = job.created_by
    if template is None or user is None or not user.email:
        return
    if not wants(user=user, kind=NotificationKind.JOB):
        return
    context = {
        "job_id": str(job.pk),
        "filename": job.original_filename or "your recording",
        "status": job.status,
        "duration_minutes": round((job.duration_seconds or 0) / 60, 1),
        "error_message": job.error_message,
        # Only when the checks raised a warning: a clean transcript's email stays as it was.
        "quality_summary": quality_summary(job.quality or {}) if job.quality_warnings else "",
        "job_url": f"{settings.PUBLIC_BASE_URL}/api/v1/jobs/{job.pk}",
        "transcript_url": f"{settings.PUBLIC_BASE_URL}/api/v1/jobs/{job.pk}/transcript?format=txt",
        "unsubscribe_url": unsubscribe_url(user=user, kind=NotificationKind.JOB),
    }
    email_enqueue(
        template=template,
        to=[user.email],
        context=context,
        dedupe_key=f"job:{job.pk}:{job.status}",
        headers={"job_id": str(job.pk)},
    )
