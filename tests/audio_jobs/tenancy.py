"""Cross-tenant registrations of the audio jobs endpoints (imported by tests/tenancy.py).

Each `make` seeds an object of the organisation in the state where the operation would change
something if it reached it: a queued job to cancel, a completed job with a transcript to read.
The upload id in `POST /api/v1/jobs` travels in the body, which the matrix cannot template; that
case is tested in tests/audio_jobs/test_api.py and test_uploads_s3.py.
"""

from __future__ import annotations

from apps.accounts.models import Organisation
from tests.audio_jobs.factories import JobFactory, TranscriptFactory
from tests.tenancy import list_endpoint, object_endpoint


def _queued_job_of(organisation: Organisation) -> str:
    return str(JobFactory(organisation=organisation).id)


def _completed_job_of(organisation: Organisation) -> str:
    return str(TranscriptFactory(job__organisation=organisation).job_id)


def _diarized_job_of(organisation: Organisation) -> str:
    """A completed job whose transcript has two labelled speakers (names can be given)."""
    job = TranscriptFactory(job__organisation=organisation).job
    job.diarize = True
    job.diarization = {
        "model": "resemblyzer-ge2e-0.1.4",
        "speakers": [
            {"id": "SPEAKER_00", "seconds": 2.0, "words": 4},
            {"id": "SPEAKER_01", "seconds": 1.0, "words": 2},
        ],
    }
    job.save(update_fields=["diarize", "diarization"])
    return str(job.pk)


def _completed_job_with_audio_of(organisation: Organisation) -> str:
    """A completed job whose audio is stored: it could be transcribed again."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    job = TranscriptFactory(job__organisation=organisation).job
    default_storage.save(job.audio_key, ContentFile(b"ID3 stored audio"))
    return str(job.pk)


def _edited_job_of(organisation: Organisation) -> str:
    from apps.audio_jobs.editing import transcript_edit

    transcript = TranscriptFactory(job__organisation=organisation)
    transcript_edit(job=transcript.job, revision=0, segments=[{"id": 0, "text": "Edited."}])
    return str(transcript.job_id)


def _held_job_of(organisation: Organisation) -> str:
    from django.utils import timezone

    job = TranscriptFactory(job__organisation=organisation).job
    job.legal_hold_at, job.legal_hold_reason = timezone.now(), "Matter"
    job.save(update_fields=["legal_hold_at", "legal_hold_reason"])
    return str(job.pk)


object_endpoint("GET", "/api/v1/jobs/{job_id}", _queued_job_of)
object_endpoint("GET", "/api/v1/jobs/{job_id}/queue", _queued_job_of)
object_endpoint("DELETE", "/api/v1/jobs/{job_id}", _completed_job_of)
object_endpoint("POST", "/api/v1/jobs/{job_id}/cancel", _queued_job_of)
object_endpoint("GET", "/api/v1/jobs/{job_id}/transcript", _completed_job_of)
object_endpoint(
    "POST", "/api/v1/jobs/{job_id}/retranscribe", _completed_job_with_audio_of, {"model": "base"}
)


def _share_of(organisation: Organisation) -> str:
    """B's share link (its id stands for both the job's and the share's in the path)."""
    from apps.audio_jobs.shares import share_create

    job = TranscriptFactory(job__organisation=organisation).job
    share, _token = share_create(
        organisation=organisation, job_id=job.pk, user=None, expires_in_days=7
    )
    return str(share.pk)


# Share links: B's completed job would be shared, its links listed; B's link revoked.
object_endpoint("GET", "/api/v1/jobs/{job_id}/shares", _completed_job_of)
object_endpoint("POST", "/api/v1/jobs/{job_id}/shares", _completed_job_of, {"note": "x"})
object_endpoint("DELETE", "/api/v1/jobs/{job_id}/shares/{share_id}", _share_of)

# Legal hold: B's free job would be held, B's held job released.
object_endpoint("POST", "/api/v1/jobs/{job_id}/legal-hold", _completed_job_of, {"reason": "x"})
object_endpoint("DELETE", "/api/v1/jobs/{job_id}/legal-hold", _held_job_of)
list_endpoint("/api/v1/jobs", _held_job_of, query={"legal_hold": "true"})

list_endpoint("/api/v1/jobs", _queued_job_of)
list_endpoint("/api/v1/jobs", _completed_job_of, query={"status": "completed"})
# B's transcript says "The quarterly report is ready." (the factory's text), its file is
# "meeting.mp3": a search by either must never find it for A.
list_endpoint("/api/v1/jobs", _completed_job_of, query={"q": "quarterly"})
list_endpoint("/api/v1/jobs", _completed_job_of, query={"q": "meeting"})

# Transcript editing: B's completed job at revision 0, whose segment 0 the body would change.
object_endpoint(
    "PATCH",
    "/api/v1/jobs/{job_id}/transcript",
    _completed_job_of,
    {"revision": 0, "segments": [{"id": 0, "text": "Changed by another organisation."}]},
)
object_endpoint("GET", "/api/v1/jobs/{job_id}/transcript/revisions", _completed_job_of)
object_endpoint("GET", "/api/v1/jobs/{job_id}/transcript/speakers", _diarized_job_of)
object_endpoint(
    "PATCH",
    "/api/v1/jobs/{job_id}/transcript/speakers",
    _diarized_job_of,
    {"names": {"SPEAKER_00": "Named by another organisation"}},
)
object_endpoint(
    "POST",
    "/api/v1/jobs/{job_id}/transcript/revert",
    _edited_job_of,
    {"revision": 0, "current_revision": 1},
)
