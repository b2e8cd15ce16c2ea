"""Transcribe through an ordinary job and answer with its transcript (OpenAI's audio API).

The job is created by `apps.audio_jobs.services.job_create_from_file` like any upload (quota,
probe, storage, fair dispatch, audit, notifications), then the request waits for it
(`waiting.job_wait`). A client that goes away, or a wait that times out, leaves an ordinary job
that finishes and shows in the jobs list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.audio_jobs import formats
from apps.audio_jobs.models import JobStatus
from apps.audio_jobs.services import JobOptions, job_create_from_file
from apps.core.exceptions import ApplicationError
from workers.engines.models import WHISPER_LANGUAGE_NAMES

from . import selectors, waiting
from .exceptions import JOB_ID_HEADER, NO_RETRY_HEADER, QUOTA_CODE, TranscriptionFailed

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"

# A failed job's error code -> (status, the request parameter at fault). Other codes (time_limit,
# internal_error, engine and model errors, too_many_attempts) are the server's: 500.
_CLIENT_FAILURES: dict[str, tuple[int, str | None]] = {
    "invalid_media": (400, "file"),
    "unsupported_media_type": (400, "file"),
    "corrupt_media": (400, "file"),
    "media_timeout": (400, "file"),
    "empty_media": (400, "file"),
    "audio_decode_failed": (400, "file"),
    "duration_limit_exceeded": (400, "file"),
    "unsupported_language": (400, "language"),
    "invalid_model_profile": (400, "model"),
    QUOTA_CODE: (429, None),
    "organisation_inactive": (403, None),
}


@dataclass(frozen=True)
class Transcription:
    job_id: Any
    body: str | dict[str, Any]
    media_type: str


@dataclass(frozen=True)
class OutputOptions:
    response_format: str = "json"
    words: bool = False
    segments: bool = True


def transcription_create_and_wait(
    *,
    organisation,
    user,
    path: str | Path,
    original_filename: str,
    size_bytes: int,
    options: JobOptions,
    output: OutputOptions,
) -> Transcription:
    """Create the job, wait for it (OPENAI_COMPAT_WAIT_SECONDS) and render its transcript."""
    job, _created = job_create_from_file(
        organisation=organisation,
        user=user,
        path=path,
        original_filename=original_filename,
        size_bytes=size_bytes,
        options=options,
    )
    try:
        state = waiting.job_wait(
            organisation_id=organisation.pk,
            job_id=job.pk,
            timeout=settings.OPENAI_COMPAT_WAIT_SECONDS,
        )
        if state is None or state.status != JobStatus.COMPLETED:
            raise _not_completed(job.pk, state)
        result = selectors.transcript_result(organisation_id=organisation.pk, job_id=job.pk)
        if result is None:  # deleted between the poll and this read
            raise _not_completed(job.pk, None)
        body, media_type = render(result, output)
    except Exception as exc:
        # Whatever fails from here (a database outage while waiting, a bug rendering), the job
        # exists: the answer names it and tells SDKs not to retry, which would upload and
        # transcribe (and count) the file again. `exception_handler` reads this mark.
        exc.lexiscore_job_id = job.pk  # type: ignore[attr-defined]
        raise
    return Transcription(job_id=job.pk, body=body, media_type=media_type)


def _not_completed(job_id: Any, state: selectors.JobState | None) -> ApplicationError:
    headers = {JOB_ID_HEADER: str(job_id), NO_RETRY_HEADER: "false"}
    details: dict[str, Any] = {"job_id": str(job_id)}
    if state is None:
        return ApplicationError(
            f"Job {job_id} was deleted before it finished.",
            code="job_deleted",
            status_code=409,
            details=details,
            headers=headers,
        )
    if state.status == JobStatus.CANCELLED:
        return ApplicationError(
            f"Job {job_id} was cancelled before it finished.",
            code="job_cancelled",
            status_code=409,
            details=details,
            headers=headers,
        )
    code = state.error_code or "internal_error"
    status_code, param = _CLIENT_FAILURES.get(code, (500, None))
    if param is not None:
        details["param"] = param
    if status_code >= 500:
        logger.warning("OpenAI-compatible transcription failed", extra={"job_id": str(job_id)})
    return TranscriptionFailed(
        f"{state.error_message or 'The transcription failed.'} (job {job_id})",
        code=code,
        status_code=status_code,
        details=details,
        headers=headers,
    )


def render(result: dict[str, Any], output: OutputOptions) -> tuple[str | dict[str, Any], str]:
    """The transcript as OpenAI's `response_format` gives it: (body, media type); a dict body
    is JSON."""
    fmt = output.response_format
    text = str(result.get("text", "")).strip()
    if fmt == "json":
        return {"text": text}, "application/json"
    if fmt == "text":
        return text + "\n", TEXT_MEDIA_TYPE
    if fmt == "srt":
        return formats.render_srt(result), formats.FORMATS["srt"].media_type
    if fmt == "vtt":
        return formats.render_vtt(result), formats.FORMATS["vtt"].media_type
    verbose = formats.verbose_json(result)
    verbose["text"] = text
    # OpenAI names the language ("english"); the jobs API's JSON keeps Whisper's code.
    verbose["language"] = WHISPER_LANGUAGE_NAMES.get(verbose["language"], verbose["language"])
    if not output.words:
        del verbose["words"]
    if not output.segments:
        del verbose["segments"]
    return verbose, "application/json"
