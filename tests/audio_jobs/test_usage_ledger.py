"""The monthly quota counts audio for good: deleting a job gives no minutes back (AudioUsage)."""

from __future__ import annotations

import importlib
import json

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command

from apps.audio_jobs import selectors, services
from apps.audio_jobs.models import AudioUsage, JobStatus
from tests.audio_jobs.conftest import create_from_clip
from tests.audio_jobs.factories import JobFactory
from tests.audio_jobs.test_upload_quota import _run, unvalidated  # noqa: F401 (fixture)
from tests.factories import OrganisationFactory


@pytest.fixture
def quota(settings):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {"free": 1, "team": 10, "enterprise": None}


def used(organisation) -> float:
    return selectors.audio_seconds_used(organisation=organisation, since=selectors.month_start())


def test_deleting_a_transcribed_job_gives_no_minutes_back(
    db, quota, media_root, speech, django_capture_on_commit_callbacks
):
    organisation = OrganisationFactory(plan="free")
    job, _created = create_from_clip(organisation, speech.say("Hello there, this is a test."))
    before = used(organisation)

    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=job)

    assert before == pytest.approx(job.duration_seconds)
    assert used(organisation) == before
    assert AudioUsage.objects.get(job_id=job.pk).seconds == job.duration_seconds


def test_transcribe_delete_repeat_runs_out_of_minutes(
    db, quota, django_capture_on_commit_callbacks
):
    organisation = OrganisationFactory(plan="free")
    for _ in range(2):
        job = JobFactory(organisation=organisation, status=JobStatus.COMPLETED, duration_seconds=30)
        with django_capture_on_commit_callbacks(execute=True):
            services.job_delete(job=job)

    with pytest.raises(services.QuotaExceeded):
        services.quota_check(organisation=organisation)


def test_the_usage_command_counts_deleted_jobs(db, org, capsys, django_capture_on_commit_callbacks):
    job = JobFactory(organisation=org, status=JobStatus.COMPLETED, duration_seconds=90)
    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=job)

    call_command("usage", "--organisation", str(org.pk), "--json")

    assert json.loads(capsys.readouterr().out)["used_minutes"] == 1.5


def test_a_presigned_upload_counts_once_the_worker_validated_it(unvalidated):  # noqa: F811
    assert not AudioUsage.objects.filter(job_id=unvalidated.pk).exists()

    _run(unvalidated)

    unvalidated.refresh_from_db()
    row = AudioUsage.objects.get(job_id=unvalidated.pk)
    assert row.seconds == unvalidated.duration_seconds > 0
    assert row.job_created_at == unvalidated.created_at


def test_a_job_cancelled_before_work_gives_its_minutes_back_even_once_deleted(
    db, quota, django_capture_on_commit_callbacks
):
    organisation = OrganisationFactory(plan="free")
    job = JobFactory(organisation=organisation, duration_seconds=60)
    assert used(organisation) == 60

    services.job_cancel(job=job)
    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=job)

    assert used(organisation) == 0


def test_the_ledger_is_filled_from_the_jobs_that_exist(db):
    organisation = OrganisationFactory()
    counted = JobFactory(organisation=organisation, duration_seconds=40, usage=False)
    JobFactory(organisation=organisation, status=JobStatus.CANCELLED, usage=False)
    JobFactory(organisation=organisation, duration_seconds=None, usage=False)
    migration = importlib.import_module("apps.audio_jobs.migrations.0005_fill_audio_usage")

    migration.fill(django_apps, None)

    row = AudioUsage.objects.get()
    assert (row.job_id, row.seconds, row.job_created_at) == (counted.pk, 40, counted.created_at)
    assert used(organisation) == 40


def test_a_job_that_failed_before_any_worker_started_it_stays_refunded_once_deleted(
    db, quota, django_capture_on_commit_callbacks
):
    from apps.audio_jobs.processing import job_fail_unexpectedly

    organisation = OrganisationFactory(plan="free")
    job = JobFactory(organisation=organisation, status=JobStatus.QUEUED, duration_seconds=50)
    assert used(organisation) == 50

    job_fail_unexpectedly(job_id=str(job.pk), code="broker_lost", message="x")
    refunded = used(organisation)
    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=job)

    assert refunded == 0
    assert used(organisation) == 0


def test_a_job_an_older_release_wrote_without_a_ledger_row_still_counts(db, quota):
    """During an upgrade the old release serves while the new one migrates: its jobs get a
    duration and no ledger row, and must count all the same."""
    organisation = OrganisationFactory(plan="free")
    job = JobFactory(organisation=organisation, status=JobStatus.COMPLETED, duration_seconds=600)
    AudioUsage.objects.filter(job_id=job.pk).delete()

    assert used(organisation) == 600
    with pytest.raises(services.QuotaExceeded):
        services.quota_check(organisation=organisation)
