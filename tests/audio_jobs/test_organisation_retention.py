"""An organisation's own retention: audio kept shorter than the platform's, whole jobs deleted
after `job_retention_days`, legal holds respected, every change and deletion audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob
from apps.audio_jobs.retention import jobs_retention_cleanup
from apps.audit.models import AuditAction, AuditEvent
from apps.core.maintenance import audio_retention_cleanup
from tests.audio_jobs.conftest import media_files
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory, TranscriptFactory
from tests.factories import OrganisationFactory, bearer, member

pytestmark = pytest.mark.django_db


def ended(organisation, days_ago: float, **fields) -> TranscriptionJob:
    """A completed job with a transcript and stored audio, ended `days_ago`."""
    job = TranscriptFactory(job__organisation=organisation, **fields).job
    default_storage.save(job.audio_key, ContentFile(b"audio"))
    TranscriptionJob.objects.filter(pk=job.pk).update(
        finished_at=timezone.now() - timedelta(days=days_ago)
    )
    return job


def audio_of(job: TranscriptionJob) -> str:
    job.refresh_from_db()
    return job.audio_key


def test_an_organisation_keeps_audio_shorter_than_the_platform_never_longer(media_root):
    short = OrganisationFactory(audio_retention_days=7)
    long = OrganisationFactory(audio_retention_days=365)
    default = OrganisationFactory()
    short_job, long_job, default_job = (ended(org, 10) for org in (short, long, default))
    long_old = ended(long, 40)

    assert audio_retention_cleanup(days=30) == 2

    assert audio_of(short_job) == ""  # its own 7 days
    assert audio_of(long_job) and audio_of(default_job)  # 10 days < 30
    assert audio_of(long_old) == ""  # 365 asked, the platform's 30 applies


def test_with_audio_kept_forever_by_the_platform_an_organisations_retention_applies(media_root):
    short = OrganisationFactory(audio_retention_days=7)
    job, other = ended(short, 10), ended(OrganisationFactory(), 1000)

    assert audio_retention_cleanup(days=0) == 1

    assert audio_of(job) == "" and audio_of(other)


def test_jobs_past_the_organisations_retention_are_deleted_with_their_files(
    media_root, django_capture_on_commit_callbacks
):
    from apps.core.metrics import RETENTION_DELETIONS

    jobs_before = RETENTION_DELETIONS.labels("job")._value.get()
    organisation = OrganisationFactory(job_retention_days=30)
    old = ended(organisation, 40)
    recent = ended(organisation, 10)
    held = ended(organisation, 40, job__legal_hold_at=timezone.now())
    running = JobFactory(organisation=organisation, status=JobStatus.PROCESSING)
    elsewhere = ended(OrganisationFactory(), 400)

    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_retention_cleanup() == 1

    remaining = set(TranscriptionJob.objects.values_list("pk", flat=True))
    assert remaining == {recent.pk, held.pk, running.pk, elsewhere.pk}
    assert not Transcript.objects.filter(job_id=old.pk).exists()
    assert old.audio_key not in media_files(media_root)
    event = AuditEvent.objects.get(action=AuditAction.RETENTION_JOBS_DELETED)
    assert event.organisation_id == organisation.pk
    assert event.metadata == {"job_retention_days": 30, "count": 1, "job_ids": [str(old.pk)]}
    assert RETENTION_DELETIONS.labels("job")._value.get() - jobs_before == 1


def test_one_run_stops_at_its_time_budget_and_the_next_goes_on(media_root):
    organisation = OrganisationFactory(job_retention_days=1)
    for _ in range(3):
        ended(organisation, 5)

    assert jobs_retention_cleanup(budget_seconds=0) == 1  # one job, then out of time
    assert jobs_retention_cleanup() == 2
    assert not TranscriptionJob.objects.exists()


def test_the_hourly_task_reports_the_jobs_it_deleted(media_root):
    from workers.maintenance import retention_cleanup

    ended(OrganisationFactory(job_retention_days=3), 5)

    assert retention_cleanup.run()["jobs_deleted"] == 1


def test_admins_set_the_retention_and_null_returns_to_the_default(api_client):
    owner = member(Role.OWNER)
    url = f"/api/v1/organisations/{owner.organisation.pk}/"
    headers = bearer(owner.user, owner.organisation)

    response = api_client.patch(
        url, {"audio_retention_days": 7, "job_retention_days": 90}, format="json", **headers
    )

    assert response.status_code == 200, response.content
    assert response.json()["audio_retention_days"] == 7
    assert response.json()["job_retention_days"] == 90
    cleared = api_client.patch(url, {"job_retention_days": None}, format="json", **headers)
    assert cleared.json()["job_retention_days"] is None
    assert cleared.json()["audio_retention_days"] == 7
    events = AuditEvent.objects.filter(action=AuditAction.ORGANISATION_UPDATED)
    changes = sorted((e.metadata for e in events), key=len)
    assert changes == [
        {"job_retention_days": [90, None]},
        {"audio_retention_days": [None, 7], "job_retention_days": [None, 90]},
    ]
    for bad in (0, -1, 36_501, "soon"):
        refused = api_client.patch(url, {"job_retention_days": bad}, format="json", **headers)
        assert refused.status_code == 400, bad
    colleague = member(Role.MEMBER, organisation=owner.organisation, email="m@example.com")
    denied = api_client.patch(
        url,
        {"job_retention_days": 1},
        format="json",
        **bearer(colleague.user, owner.organisation),
    )
    assert denied.status_code == 403
    owner.organisation.refresh_from_db()
    assert owner.organisation.job_retention_days is None


def test_a_completed_job_factory_without_audio_is_not_an_error(media_root):
    """Jobs whose audio retention already took their audio are deleted all the same."""
    organisation = OrganisationFactory(job_retention_days=1)
    job = CompletedJobFactory(organisation=organisation, audio_key="")
    TranscriptionJob.objects.filter(pk=job.pk).update(
        finished_at=timezone.now() - timedelta(days=3)
    )

    assert jobs_retention_cleanup() == 1


def test_a_run_stopped_half_way_still_audits_what_it_deleted(media_root, monkeypatch):
    from apps.audio_jobs import retention

    organisation = OrganisationFactory(job_retention_days=1)
    jobs = [ended(organisation, 5) for _ in range(3)]
    real_delete, calls = retention.services.job_delete, []

    def delete_then_stop(*, job):
        calls.append(job.pk)
        if len(calls) == 2:
            raise TimeoutError("the task's soft time limit")
        return real_delete(job=job)

    monkeypatch.setattr(retention.services, "job_delete", delete_then_stop)

    with pytest.raises(TimeoutError):
        jobs_retention_cleanup()

    event = AuditEvent.objects.get(action=AuditAction.RETENTION_JOBS_DELETED)
    assert event.metadata["count"] == 1
    assert TranscriptionJob.objects.count() == len(jobs) - 1


def test_a_job_retried_after_it_was_listed_is_not_deleted(media_root, monkeypatch):
    """Checked again under its lock: an operator's retry between the listing and the delete."""
    from contextlib import contextmanager

    from django.db import transaction

    from apps.audio_jobs import retention

    job = ended(OrganisationFactory(job_retention_days=1), 5)
    atomic = transaction.atomic

    @contextmanager
    def retried_first():
        TranscriptionJob.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)
        with atomic():
            yield

    monkeypatch.setattr(retention.transaction, "atomic", retried_first)

    assert jobs_retention_cleanup() == 0
    assert TranscriptionJob.objects.filter(pk=job.pk).exists()
