"""A presigned upload's job is held to the monthly quota once the worker knows its duration: the
web tier could only check that some minutes were left."""

from __future__ import annotations

import uuid
from unittest import mock

import pytest
from django.core.files import File
from django.core.files.storage import default_storage
from django.utils import timezone

from apps.audio_jobs import processing
from apps.audio_jobs import services as job_services
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from tests.audio_jobs.factories import JobFactory
from tests.factories import OrganisationFactory
from workers.engines.base import TranscriptionOptions
from workers.engines.errors import TranscriptionCancelled


class _Engine:
    """Stands in for Whisper: these tests are about what happens before it runs."""

    def __init__(self):
        self.ran = False

    def transcribe(self, path, options, progress_callback, should_cancel):
        self.ran = True
        raise TranscriptionCancelled()


@pytest.fixture
def unvalidated(db, speech, settings):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {"free": 1, "team": 10, "enterprise": None}
    organisation = OrganisationFactory(plan="free")
    with speech.say("Hello there, this is a short clip.").open("rb") as handle:
        key = default_storage.save(f"test/{uuid.uuid4()}.wav", File(handle))
    job = JobFactory(
        organisation=organisation,
        status=JobStatus.PROCESSING,
        started_at=timezone.now(),  # as the worker's claim sets it
        audio_key=key,
        audio_validated=False,
        duration_seconds=None,
    )
    yield job
    default_storage.delete(key)


def _run(job):
    engine = _Engine()
    with mock.patch.object(
        processing, "_engine_for", return_value=(engine, TranscriptionOptions())
    ):
        outcome = processing._run(job)
    return outcome, engine


def test_an_upload_longer_than_the_minutes_left_fails_with_quota_exceeded(unvalidated):
    # 58 of the plan's 60 seconds used: the clip (a few seconds) does not fit.
    JobFactory(
        organisation=unvalidated.organisation, status=JobStatus.COMPLETED, duration_seconds=58.0
    )

    outcome, engine = _run(unvalidated)

    job = TranscriptionJob.objects.get(pk=unvalidated.pk)
    assert outcome == "failed"
    assert not engine.ran
    assert (job.status, job.error_code) == (JobStatus.FAILED, "quota_exceeded")
    assert job.duration_seconds is None  # counts nothing against the quota


def test_an_upload_within_the_minutes_left_runs(unvalidated):
    JobFactory(
        organisation=unvalidated.organisation, status=JobStatus.COMPLETED, duration_seconds=30.0
    )

    outcome, engine = _run(unvalidated)

    job = TranscriptionJob.objects.get(pk=unvalidated.pk)
    assert engine.ran
    assert outcome == "cancelled"  # what the stand-in engine does
    assert job.audio_validated and job.duration_seconds > 0


def test_an_organisation_deleted_while_its_upload_is_validated_ends_the_job_quietly(unvalidated):
    from apps.accounts.models import Organisation

    real_probe = job_services.probe_audio

    def probe_then_delete(path):
        result = real_probe(path)
        Organisation.objects.filter(pk=unvalidated.organisation_id).delete()
        return result

    with mock.patch("apps.audio_jobs.services.probe_audio", side_effect=probe_then_delete):
        outcome, engine = _run(unvalidated)

    assert outcome == "deleted"
    assert not engine.ran


def test_a_job_validated_after_its_organisation_was_deactivated_fails(unvalidated):
    type(unvalidated.organisation).objects.filter(pk=unvalidated.organisation_id).update(
        is_active=False
    )

    outcome, engine = _run(unvalidated)

    unvalidated.refresh_from_db()
    assert outcome == "failed"
    assert unvalidated.error_code == "organisation_inactive"
    assert engine.ran is False


def test_no_job_is_created_for_a_deactivated_organisation(db, media_root, speech):
    from apps.audio_jobs import services
    from apps.audio_jobs.models import TranscriptionJob
    from tests.audio_jobs.conftest import create_from_clip, media_files

    organisation = OrganisationFactory(plan="enterprise", is_active=False)

    with pytest.raises(services.OrganisationInactive) as refused:
        create_from_clip(organisation, speech.say("Hello there, this is a test."))

    assert refused.value.status_code == 403
    assert not TranscriptionJob.objects.filter(organisation=organisation).exists()
    assert media_files(media_root) == []


def test_a_queued_job_of_a_deactivated_organisation_is_cancelled_when_a_worker_claims_it(db):
    from apps.audio_jobs.models import AudioUsage, TranscriptionJob

    organisation = OrganisationFactory(plan="free")
    job = JobFactory(organisation=organisation, status=JobStatus.QUEUED, duration_seconds=30)
    type(organisation).objects.filter(pk=organisation.pk).update(is_active=False)

    outcome, claimed = processing._claim(str(job.pk), 0)

    job = TranscriptionJob.objects.get(pk=job.pk)
    assert (outcome, claimed) == ("cancelled", None)
    assert job.status == JobStatus.CANCELLED
    assert job.error_code == "organisation_inactive"
    assert not AudioUsage.objects.filter(job_id=job.pk).exists()  # nothing was transcribed
