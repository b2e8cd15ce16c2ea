"""Reads of the OpenAI-compatible routes (organisation-scoped, like every selector)."""

from __future__ import annotations

from typing import Any, NamedTuple

from apps.audio_jobs.models import Transcript, TranscriptionJob


class JobState(NamedTuple):
    status: str
    error_code: str
    error_message: str


def job_state(*, organisation_id: Any, job_id: Any) -> JobState | None:
    """The job's status and error, or None once it is gone: one primary-key lookup of three
    columns (it runs every poll while a request waits)."""
    row = (
        TranscriptionJob.objects.filter(pk=job_id, organisation_id=organisation_id)
        .values_list("status", "error_code", "error_message")
        .first()
    )
    return JobState(*row) if row is not None else None


def transcript_result(*, organisation_id: Any, job_id: Any) -> dict | None:
    """The completed job's transcript in the engines' dict form, or None once it is gone."""
    transcript = (
        Transcript.objects.select_related("job")
        .filter(job_id=job_id, job__organisation_id=organisation_id)
        .first()
    )
    return transcript.as_result() if transcript is not None else None
