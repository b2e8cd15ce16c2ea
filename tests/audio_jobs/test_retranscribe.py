"""`POST /api/v1/jobs/<id>/retranscribe`: a new job from a finished job's stored audio.

The source's audio is a stored file (bytes, not real audio: it was validated when it was
uploaded, and nothing decodes it again in the web tier). Each test has its own media root, so
"nothing is left behind" is checked on exactly the files that test made.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from apps.accounts.models import Role
from apps.audio_jobs import services
from apps.audio_jobs.models import AudioUsage, JobPriority, JobStatus, TranscriptionJob
from apps.audit.models import AuditEvent
from apps.core.models import PendingDeletion
from tests.audio_jobs.conftest import media_files
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory, TranscriptFactory
from tests.factories import ApiKeyFactory, api_key_header, bearer, member

JOBS = "/api/v1/jobs"
AUDIO = b"ID3 the stored audio of the source job"


@pytest.fixture(autouse=True)
def _media(media_root) -> Path:
    return media_root


def stored_source(organisation, **fields) -> TranscriptionJob:
    """A finished job of `organisation` whose audio is stored (a transcript when completed)."""
    fields.setdefault("status", JobStatus.COMPLETED)
    job = CompletedJobFactory(organisation=organisation, **fields)
    if job.status == JobStatus.COMPLETED:
        TranscriptFactory(job=job)
    default_storage.save(job.audio_key, ContentFile(AUDIO))
    return job


def retranscribe(client, headers, job_id, **body):
    return client.post(f"{JOBS}/{job_id}/retranscribe", body, format="json", **headers)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


# ---- the new job -------------------------------------------------------------------------------
def test_a_completed_job_is_transcribed_again_as_a_new_job_with_its_own_copy(
    api_client, auth, org, media_root
):
    source = stored_source(org, original_filename="Board meeting.mp3", duration_seconds=61.5)

    response = retranscribe(
        api_client,
        auth,
        source.pk,
        model="base",
        language="fr",
        initial_prompt="Names: Zoë, Anaïs.",
        priority="high",
        word_timestamps=False,
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    job = TranscriptionJob.objects.get(pk=body["id"])
    assert body["retranscribed_from"] == str(source.pk)
    assert body["status"] == "queued"
    assert (body["model"], body["language"], body["priority"]) == ("base", "fr", "high")
    assert (job.initial_prompt, job.word_timestamps) == ("Names: Zoë, Anaïs.", False)
    assert job.priority == JobPriority.HIGH
    assert job.audio_key == f"org/{org.pk}/audio/{job.pk}.mp3"
    assert default_storage.open(job.audio_key).read() == AUDIO
    assert (job.original_filename, job.duration_seconds, job.container, job.codec) == (
        "Board meeting.mp3",
        61.5,
        "mp3",
        "mp3",
    )
    assert job.audio_validated is True
    assert job.size_bytes == source.size_bytes
    assert sorted(media_files(media_root)) == sorted([source.audio_key, job.audio_key])
    assert PendingDeletion.objects.count() == 0  # the copy's guard was called off


def test_the_source_is_left_as_it_was(api_client, auth, org):
    source = stored_source(org)
    before = TranscriptionJob.objects.filter(pk=source.pk).values().get()

    retranscribe(api_client, auth, source.pk, model="base")

    assert TranscriptionJob.objects.filter(pk=source.pk).values().get() == before
    assert api_client.get(f"{JOBS}/{source.pk}", **auth).json()["retranscribed_from"] is None


def test_the_minutes_count_again_for_the_new_job(api_client, auth, org):
    source = stored_source(org, duration_seconds=90.0)

    job_id = retranscribe(api_client, auth, source.pk).json()["id"]

    assert AudioUsage.objects.get(job_id=job_id).seconds == 90.0
    assert AudioUsage.objects.filter(organisation=org).count() == 2


def test_the_new_job_is_published_once_after_commit(
    api_client, auth, org, django_capture_on_commit_callbacks
):
    source = stored_source(org, duration_seconds=30.0)

    with (
        mock.patch("workers.transcription.transcribe_job.apply_async") as publish,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = retranscribe(api_client, auth, source.pk, priority="low")

    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    publish.assert_called_once_with(
        args=[str(job.pk)],
        queue="transcription.cpu",
        priority=9,
        soft_time_limit=300 + 30,
        time_limit=390,
        headers={"job_id": str(job.pk)},
    )
    assert job.dispatched_at is not None


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELLED])
def test_failed_and_cancelled_jobs_can_be_transcribed_again(api_client, auth, org, status):
    source = stored_source(org, status=status, error_code="time_limit")

    response = retranscribe(api_client, auth, source.pk)

    assert response.status_code == 201, response.json()
    assert response.json()["retranscribed_from"] == str(source.pk)


def test_audio_never_validated_is_validated_by_the_worker_as_a_presigned_upload_is(
    api_client, auth, org
):
    source = stored_source(
        org,
        status=JobStatus.CANCELLED,
        audio_validated=False,
        duration_seconds=None,
        container="",
        codec="",
        usage=False,
    )

    response = retranscribe(api_client, auth, source.pk)

    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    assert (job.audio_validated, job.duration_seconds) == (False, None)
    assert job.audio_key.endswith(".bin")
    assert not AudioUsage.objects.filter(job_id=job.pk).exists()


def test_an_audit_event_names_both_jobs_and_never_the_prompt(api_client, auth, owner, org):
    source = stored_source(org)

    job_id = retranscribe(
        api_client, auth, source.pk, model="base", initial_prompt="Secret project Falcon"
    ).json()["id"]

    event = AuditEvent.objects.get(action="job.retranscribed")
    assert event.organisation_id == org.pk
    assert event.actor_id == owner.user.pk
    assert event.target_id == job_id
    assert event.metadata == {
        "job_id": job_id,
        "retranscribed_from": str(source.pk),
        "model": "base",
        "language": "",
        "task": "transcribe",
    }
    assert "Falcon" not in str(event.metadata)


def test_deleting_the_source_keeps_the_new_job_and_its_audio_and_clears_the_link(
    api_client, auth, org, django_capture_on_commit_callbacks
):
    source = stored_source(org)
    job_id = retranscribe(api_client, auth, source.pk).json()["id"]
    job = TranscriptionJob.objects.get(pk=job_id)

    with django_capture_on_commit_callbacks(execute=True):
        api_client.delete(f"{JOBS}/{source.pk}", **auth)

    assert api_client.get(f"{JOBS}/{job_id}", **auth).json()["retranscribed_from"] is None
    assert default_storage.exists(job.audio_key)
    assert not default_storage.exists(source.audio_key)


# ---- idempotency -------------------------------------------------------------------------------
def test_the_same_idempotency_key_returns_the_same_job_and_copies_once(
    api_client, auth, org, media_root
):
    source = stored_source(org)
    headers = {**auth, "HTTP_IDEMPOTENCY_KEY": "again-1"}

    first = retranscribe(api_client, headers, source.pk, model="base")
    second = retranscribe(api_client, headers, source.pk, model="base")
    by_field = retranscribe(api_client, auth, source.pk, idempotency_key="again-1")

    assert (first.status_code, second.status_code, by_field.status_code) == (201, 200, 200)
    assert first.json()["id"] == second.json()["id"] == by_field.json()["id"]
    assert TranscriptionJob.objects.filter(retranscribed_from=source).count() == 1
    assert len(media_files(media_root)) == 2


def test_a_key_used_for_another_source_is_refused_not_answered_with_that_job(
    api_client, auth, org, media_root
):
    first_source, other_source = stored_source(org), stored_source(org)
    headers = {**auth, "HTTP_IDEMPOTENCY_KEY": "again-2"}
    first = retranscribe(api_client, headers, first_source.pk)

    reused = retranscribe(api_client, headers, other_source.pk)

    assert first.status_code == 201
    assert assert_error(reused, 409, "idempotency_key_reused")["details"] == {
        "job_id": first.json()["id"]
    }
    assert not TranscriptionJob.objects.filter(retranscribed_from=other_source).exists()


def test_an_unknown_source_is_not_found_whatever_the_key(api_client, auth, org, media_root):
    headers = {**auth, "HTTP_IDEMPOTENCY_KEY": "again-3"}
    retranscribe(api_client, headers, stored_source(org).pk)

    response = retranscribe(api_client, headers, "00000000-0000-4000-8000-000000000000")

    assert_error(response, 404, "job_not_found")


# ---- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.PROCESSING])
def test_a_job_still_queued_or_processing_is_a_conflict(api_client, auth, org, media_root, status):
    source = JobFactory(organisation=org, status=status)
    default_storage.save(source.audio_key, ContentFile(AUDIO))

    response = retranscribe(api_client, auth, source.pk)

    assert_error(response, 409, "job_active")
    assert TranscriptionJob.objects.count() == 1
    assert media_files(media_root) == [source.audio_key]


def test_audio_deleted_by_retention_is_a_conflict_saying_so(api_client, auth, org, settings):
    settings.AUDIO_RETENTION_DAYS = 30
    source = CompletedJobFactory(organisation=org, audio_key="")

    response = retranscribe(api_client, auth, source.pk)

    error = assert_error(response, 409, "audio_missing")
    assert "30 days" in error["message"]
    assert "POST /api/v1/jobs" in error["message"]
    assert TranscriptionJob.objects.count() == 1


def test_audio_missing_from_the_storage_is_a_conflict_and_leaves_nothing(
    api_client, auth, org, media_root
):
    source = CompletedJobFactory(organisation=org)  # its key names no stored file

    response = retranscribe(api_client, auth, source.pk)

    assert_error(response, 409, "audio_missing")
    assert media_files(media_root) == []
    assert PendingDeletion.objects.count() == 0


def test_audio_deleted_while_the_request_waited_for_the_lock_is_a_conflict(
    api_client, auth, org, media_root
):
    source = stored_source(org)
    real_copy = services.storage.copy_file

    def copy_after_the_file_went(source_key, target_key, **kwargs):
        default_storage.delete(source_key)
        return real_copy(source_key, target_key, **kwargs)

    with mock.patch.object(services.storage, "copy_file", side_effect=copy_after_the_file_went):
        response = retranscribe(api_client, auth, source.pk)

    assert_error(response, 409, "audio_missing")
    assert media_files(media_root) == []
    assert PendingDeletion.objects.count() == 0


def test_a_failure_after_the_copy_discards_it(api_client, auth, org, media_root):
    source = stored_source(org)

    with (
        mock.patch.object(services, "_create_job", side_effect=RuntimeError("db gone")),
        pytest.raises(RuntimeError),
    ):
        services.job_retranscribe(
            organisation=org, user=None, source_id=source.pk, options=services.JobOptions()
        )

    assert media_files(media_root) == [source.audio_key]
    assert PendingDeletion.objects.count() == 0


def test_a_quota_the_audio_would_exceed_answers_402_and_leaves_nothing(
    api_client, auth, org, media_root, settings
):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {**settings.PLAN_AUDIO_MINUTES_PER_MONTH, org.plan: 3}
    source = stored_source(org, duration_seconds=120.0)  # 2 of the 3 minutes used

    response = retranscribe(api_client, auth, source.pk)

    error = assert_error(response, 402, "quota_exceeded")
    assert error["details"]["requested_minutes"] == 2.0
    assert TranscriptionJob.objects.count() == 1
    assert media_files(media_root) == [source.audio_key]
    assert PendingDeletion.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "huge"}, "model"),
        ({"task": "summarise"}, "task"),
        ({"priority": "urgent"}, "priority"),
        ({"initial_prompt": "x" * 1001}, "initial_prompt"),
        ({"callback_url": "https://example.com/hook"}, "callback_url"),
        ({"file": "nope"}, "file"),
    ],
)
def test_invalid_options_are_refused_with_the_field_named(api_client, auth, org, body, field):
    source = stored_source(org)

    response = retranscribe(api_client, auth, source.pk, **body)

    error = assert_error(response, 400, "validation_error")
    assert field in error["details"], error
    assert TranscriptionJob.objects.count() == 1


def test_an_unknown_job_is_404(api_client, auth):
    response = retranscribe(api_client, auth, "00000000-0000-4000-8000-000000000000")

    assert_error(response, 404, "job_not_found")


def test_another_organisations_job_is_404_and_nothing_is_copied(api_client, auth, media_root):
    other = stored_source(member(Role.OWNER).organisation)

    response = retranscribe(api_client, auth, other.pk)

    assert_error(response, 404, "job_not_found")
    assert media_files(media_root) == [other.audio_key]
    assert TranscriptionJob.objects.count() == 1


# ---- who may ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "status"), [(Role.VIEWER, 403), (Role.MEMBER, 201), (Role.ADMIN, 201)]
)
def test_members_and_up_may_transcribe_again_and_viewers_may_not(api_client, org, role, status):
    source = stored_source(org)

    response = retranscribe(api_client, bearer(member(role, organisation=org).user), source.pk)

    assert response.status_code == status, response.json()


@pytest.mark.parametrize(("role", "status"), [(Role.VIEWER, 403), (Role.MEMBER, 201)])
def test_api_keys_of_members_may_and_of_viewers_may_not(api_client, org, role, status):
    source = stored_source(org)
    key = ApiKeyFactory(organisation=org, role=role)

    response = retranscribe(api_client, api_key_header(key), source.pk)

    assert response.status_code == status, response.json()
    if status == 201:
        event = AuditEvent.objects.get(action="job.retranscribed")
        assert event.api_key_id == key.pk
