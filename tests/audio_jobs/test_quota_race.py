"""Multipart uploads checked at once cannot share the organisation's last minutes: the job's row
is inserted under the organisation's lock after a last quota check with the file's duration (as
the worker validates a presigned upload). The lock is taken in the order organisation_delete
takes its locks, so the two never deadlock."""

from __future__ import annotations

import threading
import time
from unittest import mock

import pytest
from django.db import connection

from apps.accounts.models import Organisation
from apps.audio_jobs import selectors, services
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from tests.audio_jobs.conftest import create_from_clip, media_files
from tests.audio_jobs.factories import JobFactory
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clip(speech):
    return speech.say("Hello there, this is a short test.", fmt="mp3")


@pytest.fixture(autouse=True)
def publish():
    with mock.patch("workers.transcription.transcribe_job.apply_async") as apply_async:
        yield apply_async


def in_threads(*targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(target):
        try:
            target()
        except BaseException as exc:  # reported by the caller's assertions
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_uploads_checked_at_once_cannot_share_the_last_minutes(settings, media_root, clip):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {"free": 1, "team": 100, "enterprise": None}
    organisation = OrganisationFactory(plan="free")
    seconds = services.probe_audio(clip).duration_seconds
    # Room for one and a half clips of the plan's 60 seconds.
    JobFactory(
        organisation=organisation, status=JobStatus.COMPLETED, duration_seconds=60 - 1.5 * seconds
    )
    real_probe = services.probe_upload
    both_probed = threading.Barrier(2)

    def probe(path):
        probe = real_probe(path)
        both_probed.wait(timeout=30)  # each request is past its first quota checks
        return probe

    with mock.patch.object(services, "probe_upload", probe):
        errors = in_threads(
            lambda: create_from_clip(organisation, clip),
            lambda: create_from_clip(organisation, clip),
        )

    assert [type(error) for error in errors] == [services.QuotaExceeded]
    [job] = TranscriptionJob.objects.filter(organisation=organisation, status=JobStatus.QUEUED)
    used = selectors.audio_seconds_used(organisation=organisation, since=selectors.month_start())
    assert used <= 60
    # The refused upload's file was discarded with its rolled-back row.
    assert media_files(media_root) == [job.audio_key]


def test_an_organisation_deleted_while_a_job_is_created_takes_the_job_and_its_audio(
    media_root, clip
):
    """The upload holds the organisation's lock; the delete locks the children it sees, then
    waits for the organisation's row; the upload's insert goes on (it waits for none of the
    delete's locks) and commits; the delete then deletes the new job and its audio too."""
    organisation = OrganisationFactory()
    locked, go_on = threading.Event(), threading.Event()
    real_lock = services.organisation_lock_for_quota

    def lock_then_wait(organisation_id):
        row = real_lock(organisation_id)
        locked.set()
        go_on.wait(timeout=30)
        return row

    def delete():
        locked.wait(timeout=30)
        services.organisation_delete(organisation=organisation)

    def release_once_the_delete_waits():
        locked.wait(timeout=30)
        deadline = time.monotonic() + 30
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.05)
        go_on.set()

    with mock.patch.object(services, "organisation_lock_for_quota", lock_then_wait):
        errors = in_threads(
            lambda: create_from_clip(organisation, clip), delete, release_once_the_delete_waits
        )

    assert errors == []
    assert not Organisation.objects.filter(pk=organisation.pk).exists()
    assert not TranscriptionJob.objects.exists()
    assert media_files(media_root) == []
