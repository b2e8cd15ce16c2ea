"""Names for the speakers diarization labelled (`SPEAKER_00` -> "Alice").

The labels on segments and words never change (they are what the worker found, and what the
revision history and the JSON keep); names are a mapping on the job that every rendering applies
(text, subtitles, reports, share links). Members and API keys that may edit the transcript set
them; each change is an audit event, and cached renderings of the transcript are dropped.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from django.db import transaction

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, ConflictError

from . import selectors, transcripts
from .models import JobStatus, TranscriptionJob

MAX_NAME_CHARS = 80


def known_speakers(job: TranscriptionJob) -> list[str]:
    """The labels diarization found on the job (none when not asked, failed, or not done)."""
    return [str(item.get("id")) for item in job.speakers_found()]


def clean_name(value: str) -> str:
    """A name as shown: NFC, whitespace runs (newlines included) made one space, trimmed.
    Raises ValueError for control or format characters (they could forge subtitle lines or
    hide text) and names past `MAX_NAME_CHARS`."""
    name = " ".join(unicodedata.normalize("NFC", value).split())
    if any(unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co"} for char in name):
        raise ValueError("Names cannot hold control or invisible formatting characters.")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"Names are limited to {MAX_NAME_CHARS} characters.")
    return name


@transaction.atomic
def speaker_names_set(
    *,
    organisation,
    job_id: Any,
    names: Mapping[str, str | None],
    user: Any = None,
    api_key: Any = None,
    meta: Any = None,
) -> TranscriptionJob:
    """Name (or, with null or "", unname) some of the job's speakers; other names are kept."""
    job = selectors.job_for_update(organisation=organisation, job_id=job_id)
    if job.status != JobStatus.COMPLETED:
        raise ConflictError(
            f"The job is {job.status}; its speakers can be named once it is completed.",
            code="transcript_not_ready",
        )
    labels = known_speakers(job)
    if not labels:
        raise ConflictError(
            "This transcript has no speaker labels: transcribe it again with `diarize: true`.",
            code="no_speakers",
        )
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise ApplicationError(
            f"This transcript has no speaker {', '.join(unknown[:10])}; its speakers are "
            f"{', '.join(labels)}.",
            code="unknown_speaker",
            details={"speakers": labels},
        )
    current = dict(job.speaker_names or {})
    updated = dict(current)
    for label, value in names.items():
        if value:
            updated[label] = value
        else:
            updated.pop(label, None)
    if updated == current:
        return job
    job.speaker_names = {label: updated[label] for label in labels if label in updated}
    job.save(update_fields=["speaker_names", "updated_at"])
    audit_record(
        action=AuditAction.TRANSCRIPT_SPEAKERS_RENAMED,
        actor=user,
        api_key=api_key,
        organisation=organisation,
        target=job,
        target_repr=f"Transcript of job {job.pk}"[:255],
        meta=meta,
        # The labels changed, not the names: names can be personal data, and the audit trail
        # outlives the transcript.
        metadata={
            "job_id": str(job.pk),
            "speakers": sorted(
                label for label in labels if current.get(label) != job.speaker_names.get(label)
            ),
        },
    )
    # The rendered transcript changes; the job's cached reads go with its save.
    transcripts.transcript_changed(job.pk)
    return job
