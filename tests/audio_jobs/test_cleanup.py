"""Nothing stored outlives its rows: job and organisation deletes (API service and admin) take
the jobs' audio and report files with them, abandoned presigned uploads are swept, and a failed
job can be retried by an operator (service, dead-letter requeue, admin action).

Storage is a FileSystemStorage in a temp folder; the broker is mocked at
`transcribe_job.apply_async` (the publish boundary).
"""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import OperationalError
from django.utils import timezone

from apps.accounts.models import Organisation, User
from apps.audio_jobs import processing, services
from apps.audio_jobs.models import JobPriority, JobStatus, TranscriptionJob, Upload
from apps.core import services as core_services
from apps.core.exceptions import ApplicationError, ConflictError
from apps.core.models import DeadLetter, PendingDeletion
from apps.reports.models import Report
from tests.audio_jobs.conftest import media_files
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory, UploadFactory
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db
FAILING_DELETE = "django.core.files.storage.FileSystemStorage.delete"


@pytest.fixture
def publish():
    with mock.patch("workers.transcription.transcribe_job.apply_async") as apply_async:
        yield apply_async


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("root@example.com", "a-long-Passphrase-42"))
    return client


def store(key: str) -> str:
    return default_storage.save(key, ContentFile(b"data"))


def job_with_files(organisation=None) -> tuple[TranscriptionJob, list[str]]:
    """A completed job with stored audio and two ready transcript reports (PDF and JSON)."""
    job = CompletedJobFactory(**({"organisation": organisation} if organisation else {}))
    keys = [store(job.audio_key)]
    for fmt in ("pdf", "json"):
        report = Report.objects.create(
            organisation=job.organisation, kind="transcript", format=fmt, job=job, status="ready"
        )
        report.file_key = store(f"reports/{job.organisation_id}/{report.pk}/transcript.{fmt}")
        report.save(update_fields=["file_key"])
        keys.append(report.file_key)
    return job, keys


# ---- job delete (F2) ---------------------------------------------------------------------------
def test_deleting_a_job_deletes_its_reports_files_with_its_audio(
    media_root, django_capture_on_commit_callbacks
):
    job, keys = job_with_files()
    other, other_keys = job_with_files()

    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=job)

    assert len(keys) == 3
    assert not Report.objects.filter(job_id=job.pk).exists()
    assert media_files(media_root) == sorted(other_keys)
    assert PendingDeletion.objects.count() == 0
    assert TranscriptionJob.objects.filter(pk=other.pk).exists()


def test_a_job_delete_whose_file_deletes_fail_keeps_them_for_the_sweep(
    media_root, django_capture_on_commit_callbacks
):
    from apps.core.storage import pending_deletions_sweep

    job, keys = job_with_files()

    with (
        mock.patch(FAILING_DELETE, side_effect=OSError("S3 503")),
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.job_delete(job=job)
    pending = sorted(PendingDeletion.objects.values_list("key", flat=True))
    swept = pending_deletions_sweep(now=timezone.now() + timedelta(hours=1))

    assert not TranscriptionJob.objects.filter(pk=job.pk).exists()
    assert pending == sorted(keys)
    assert swept == {"deleted": 3, "failed": 0}
    assert media_files(media_root) == []


def test_the_job_and_report_rows_that_are_deleted_are_read_under_the_lock(
    media_root, django_capture_on_commit_callbacks
):
    # The caller's instance is stale: the audio key it holds was cleared by retention since.
    job, keys = job_with_files()
    stale = TranscriptionJob.objects.get(pk=job.pk)
    TranscriptionJob.objects.filter(pk=job.pk).update(audio_key="")
    default_storage.delete(keys[0])

    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=stale)

    assert media_files(media_root) == []
    assert PendingDeletion.objects.count() == 0


# ---- admin deletes (F2) ------------------------------------------------------------------------
def test_deleting_a_job_in_the_admin_deletes_its_files(
    admin_client, settings, media_root, django_capture_on_commit_callbacks
):
    job, _keys = job_with_files()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/{settings.ADMIN_URL}audio_jobs/transcriptionjob/{job.pk}/delete/", {"post": "yes"}
        )

    assert response.status_code == 302
    assert not TranscriptionJob.objects.filter(pk=job.pk).exists()
    assert media_files(media_root) == []


def test_the_admins_bulk_delete_of_jobs_deletes_their_files(
    admin_client, settings, media_root, django_capture_on_commit_callbacks
):
    jobs = [job_with_files()[0] for _ in range(2)]

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/{settings.ADMIN_URL}audio_jobs/transcriptionjob/",
            {"action": "delete_selected", "_selected_action": [j.pk for j in jobs], "post": "yes"},
        )

    assert response.status_code == 302
    assert TranscriptionJob.objects.count() == 0
    assert media_files(media_root) == []


def test_deleting_an_organisation_in_the_admin_deletes_all_its_stored_files(
    admin_client, settings, media_root, django_capture_on_commit_callbacks
):
    organisation = OrganisationFactory()
    job_with_files(organisation)
    job_with_files(organisation)
    unused = UploadFactory(organisation=organisation)
    store(unused.key)
    usage = Report.objects.create(
        organisation=organisation, kind="usage", format="csv", status="ready"
    )
    usage.file_key = store(f"reports/{organisation.pk}/{usage.pk}/usage.csv")
    usage.save(update_fields=["file_key"])
    _other, other_keys = job_with_files()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/{settings.ADMIN_URL}accounts/organisation/{organisation.pk}/delete/",
            {"post": "yes"},
        )

    assert response.status_code == 302
    assert not Organisation.objects.filter(pk=organisation.pk).exists()
    assert media_files(media_root) == sorted(other_keys)
    # Only the unused ticket's key waits, to be deleted again once its form can no longer be
    # POSTed (test_upload_ticket_delete_s3.py).
    assert list(PendingDeletion.objects.values_list("key", "next_attempt_at")) == [
        (unused.key, services.upload_usable_until(unused))
    ]


def test_the_admins_bulk_delete_of_organisations_deletes_their_files(
    admin_client, settings, media_root, django_capture_on_commit_callbacks
):
    organisations = [OrganisationFactory(), OrganisationFactory()]
    for organisation in organisations:
        job_with_files(organisation)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/{settings.ADMIN_URL}accounts/organisation/",
            {
                "action": "delete_selected",
                "_selected_action": [o.pk for o in organisations],
                "post": "yes",
            },
        )

    assert response.status_code == 302
    assert not Organisation.objects.filter(pk__in=[o.pk for o in organisations]).exists()
    assert media_files(media_root) == []


def test_deleting_upload_tickets_in_the_admin_deletes_only_unused_objects(
    admin_client, settings, media_root, django_capture_on_commit_callbacks
):
    unused = UploadFactory()
    consumed = UploadFactory(status=Upload.Status.CONSUMED)  # its object is a job's audio
    for upload in (unused, consumed):
        store(upload.key)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/{settings.ADMIN_URL}audio_jobs/upload/",
            {
                "action": "delete_selected",
                "_selected_action": [unused.pk, consumed.pk],
                "post": "yes",
            },
        )

    assert response.status_code == 302
    assert Upload.objects.count() == 0
    assert media_files(media_root) == [consumed.key]


# ---- abandoned presigned uploads (F9) ----------------------------------------------------------
def test_the_sweep_deletes_unused_tickets_past_their_grace_with_their_objects(
    media_root, settings, django_capture_on_commit_callbacks
):
    settings.PRESIGNED_UPLOAD_GRACE_SECONDS = 3600
    now = timezone.now()
    abandoned = UploadFactory(expires_at=now - timedelta(hours=1, minutes=1))
    in_grace = UploadFactory(expires_at=now - timedelta(minutes=59))
    consumed = UploadFactory(expires_at=now - timedelta(days=3), status=Upload.Status.CONSUMED)
    for upload in (abandoned, in_grace, consumed):
        store(upload.key)

    with django_capture_on_commit_callbacks(execute=True):
        deleted = services.uploads_delete_abandoned(now=now)

    assert deleted == 1
    assert sorted(Upload.objects.values_list("pk", flat=True)) == sorted([in_grace.pk, consumed.pk])
    assert media_files(media_root) == sorted([in_grace.key, consumed.key])


def abandoned_tickets(count: int) -> None:
    organisation = OrganisationFactory()
    expired = timezone.now() - timedelta(days=2)
    Upload.objects.bulk_create(
        UploadFactory.build(organisation=organisation, expires_at=expired) for _ in range(count)
    )


def test_the_sweep_deletes_every_abandoned_ticket_in_batches_not_only_the_first_thousand():
    abandoned_tickets(1001)

    deleted = services.uploads_delete_abandoned()

    assert deleted == 1001
    assert Upload.objects.count() == 0
    assert PendingDeletion.objects.count() == 1001  # their objects, deleted after the commits


def test_the_sweep_stops_after_its_time_budget_and_the_next_run_goes_on():
    abandoned_tickets(5)

    first = services.uploads_delete_abandoned(batch=2, budget_seconds=0)
    second = services.uploads_delete_abandoned(batch=2)

    assert (first, second) == (2, 3)
    assert Upload.objects.count() == 0


def test_an_expired_ticket_is_refused_with_410(settings):
    settings.PRESIGNED_UPLOAD_GRACE_SECONDS = 600
    upload = UploadFactory(expires_at=timezone.now() - timedelta(minutes=11))

    with pytest.raises(ApplicationError) as refused:
        services.job_create_from_upload(
            organisation=upload.organisation,
            user=None,
            upload_id=upload.pk,
            options=services.JobOptions(),
        )

    assert (refused.value.status_code, refused.value.code) == (410, "upload_expired")
    assert refused.value.details == {"expires_at": upload.expires_at.isoformat()}
    assert Upload.objects.get(pk=upload.pk).status == Upload.Status.PENDING
    assert TranscriptionJob.objects.count() == 0


def test_the_hourly_retention_task_sweeps_uploads_and_retries_failed_deletes(
    media_root, settings, tmp_path, django_capture_on_commit_callbacks
):
    from workers.maintenance import retention_cleanup

    settings.AUDIO_RETENTION_DAYS = 0
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    abandoned = UploadFactory(expires_at=timezone.now() - timedelta(days=1))
    store(abandoned.key)
    store("reports/x/failed-before.pdf")
    PendingDeletion.objects.create(key="reports/x/failed-before.pdf", attempts=2)

    with django_capture_on_commit_callbacks(execute=False):
        result = retention_cleanup.run()

    assert result["uploads_deleted"] == 1
    assert (result["files_deleted"], result["files_failed"]) == (2, 0)
    assert media_files(media_root) == []
    assert PendingDeletion.objects.count() == 0


# ---- operator retry of a failed job (F6) -------------------------------------------------------
def failed_job(**fields) -> TranscriptionJob:
    job = JobFactory(status=JobStatus.PROCESSING, attempts=1, **fields)
    processing.job_fail_unexpectedly(
        job_id=str(job.pk), code="internal_error", message="... can be retried by an operator."
    )
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    return job


def test_a_retried_job_is_queued_afresh_and_published_with_its_own_options(
    publish, django_capture_on_commit_callbacks
):
    job = failed_job(priority=JobPriority.HIGH, duration_seconds=600.0)
    TranscriptionJob.objects.filter(pk=job.pk).update(attempts=4, deliveries_ended=1, progress=40.0)

    with django_capture_on_commit_callbacks(execute=True):
        services.job_retry(job=job)

    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert (job.error_code, job.error_message, job.progress) == ("", "", 0.0)
    assert (job.attempts, job.deliveries_ended) == (0, 0)
    assert (job.started_at, job.finished_at, job.processing_seconds) == (None, None, None)
    assert job.dispatched_at is not None
    soft, hard = services.time_limits(600.0)
    assert publish.call_args.kwargs["args"] == [str(job.pk)]
    assert publish.call_args.kwargs["priority"] == JobPriority.HIGH
    assert (
        publish.call_args.kwargs["soft_time_limit"],
        publish.call_args.kwargs["time_limit"],
    ) == (
        soft,
        hard,
    )


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.COMPLETED, JobStatus.CANCELLED])
def test_only_a_failed_job_can_be_retried(publish, status):
    job = JobFactory(status=status)

    with pytest.raises(ConflictError) as refused:
        services.job_retry(job=job)

    assert refused.value.code == "job_not_retryable"
    job.refresh_from_db()
    assert job.status == status


@pytest.mark.django_db(transaction=True)
def test_a_retry_whose_publish_raises_after_the_commit_stays_queued_for_the_sweeper():
    job = failed_job()

    with mock.patch.object(
        services, "job_dispatch", side_effect=OperationalError("server closed the connection")
    ):
        services.job_retry(job=job)

    job.refresh_from_db()
    assert (job.status, job.dispatched_at) == (JobStatus.QUEUED, None)


def test_a_failed_job_whose_audio_was_deleted_cannot_be_retried(publish):
    job = failed_job()
    TranscriptionJob.objects.filter(pk=job.pk).update(audio_key="")

    with pytest.raises(ConflictError) as refused:
        services.job_retry(job=job)

    assert refused.value.code == "job_audio_deleted"


def test_requeueing_a_failed_transcriptions_dead_letter_runs_the_job_again(
    publish, django_capture_on_commit_callbacks
):
    job = failed_job(priority=JobPriority.LOW)
    dead_letter = core_services.dead_letter_record(
        task_name="workers.transcription.transcribe_job",
        task_id="t-1",
        queue="transcription.cpu",
        args=[str(job.pk)],
        kwargs={},
        exception_type="builtins.RuntimeError",
        error="boom",
    )

    with django_capture_on_commit_callbacks(execute=True):
        core_services.dead_letter_requeue(dead_letter=dead_letter)
    with mock.patch.object(processing, "_run", return_value="completed"):
        outcome = processing.job_process(job_id=str(job.pk))

    dead_letter.refresh_from_db()
    assert dead_letter.status == DeadLetter.Status.REQUEUED
    publish.assert_called_once()
    assert publish.call_args.kwargs["priority"] == JobPriority.LOW
    assert outcome == "completed"


def test_a_dead_letter_of_a_job_that_completed_meanwhile_is_not_marked_requeued(publish):
    job = JobFactory(status=JobStatus.COMPLETED)
    dead_letter = DeadLetter.objects.create(
        task_name="workers.transcription.transcribe_job",
        task_id="t-2",
        queue="transcription.cpu",
        args=[str(job.pk)],
    )

    with pytest.raises(ConflictError, match="nothing to run again"):
        core_services.dead_letter_requeue(dead_letter=dead_letter)

    dead_letter.refresh_from_db()
    assert dead_letter.status == DeadLetter.Status.PENDING
    publish.assert_not_called()


def test_other_dead_letters_are_still_sent_again_as_they_were(django_capture_on_commit_callbacks):
    dead_letter = DeadLetter.objects.create(
        task_name="workers.webhooks.deliver", task_id="t-3", queue="webhooks", args=[7]
    )

    with (
        mock.patch("lexiscore.celery.app.send_task") as send_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        core_services.dead_letter_requeue(dead_letter=dead_letter)

    send_task.assert_called_once_with(
        "workers.webhooks.deliver", args=[7], kwargs={}, queue="webhooks"
    )


def test_the_admin_retries_the_selected_failed_jobs(
    admin_client, settings, publish, django_capture_on_commit_callbacks
):
    failed, completed = failed_job(), JobFactory(status=JobStatus.COMPLETED)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/{settings.ADMIN_URL}audio_jobs/transcriptionjob/",
            {"action": "retry_jobs", "_selected_action": [failed.pk, completed.pk]},
            follow=True,
        )

    assert response.status_code == 200
    assert "Queued 1 job(s) again." in response.content.decode()
    failed.refresh_from_db()
    assert failed.status == JobStatus.QUEUED
    assert published_ids(publish) == [str(failed.pk)]


def published_ids(publish) -> list[str]:
    return [c.kwargs["args"][0] for c in publish.call_args_list]


def test_the_dead_letters_command_reports_what_it_cannot_requeue_and_goes_on(
    publish, capsys, django_capture_on_commit_callbacks
):
    from django.core.management import CommandError, call_command

    failed, completed = failed_job(), JobFactory(status=JobStatus.COMPLETED)
    for job in (completed, failed):
        DeadLetter.objects.create(
            task_name="workers.transcription.transcribe_job",
            task_id=f"t-{job.pk}",
            queue="transcription.cpu",
            args=[str(job.pk)],
        )

    # It goes on past the one it cannot requeue, then exits non-zero (an operator's script
    # must not read "done" when a message is still pending).
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(CommandError, match=r"Requeued 1 message.*1 not requeued"),
    ):
        call_command("dead_letters", "requeue", "--all")

    _out, err = capsys.readouterr()
    assert f"Job {completed.pk} is completed: there is nothing to run again" in err
    assert published_ids(publish) == [str(failed.pk)]


def test_a_dead_letter_the_broker_refuses_stays_pending_and_says_so():
    from kombu.exceptions import OperationalError

    from apps.core.exceptions import ServiceUnavailableError

    dead_letter = DeadLetter.objects.create(
        task_name="workers.webhooks.deliver", task_id="t-4", queue="webhooks", args=[7]
    )

    with (
        mock.patch("lexiscore.celery.app.send_task", side_effect=OperationalError("refused")),
        pytest.raises(ServiceUnavailableError, match="broker refused"),
    ):
        core_services.dead_letter_requeue(dead_letter=dead_letter)

    dead_letter.refresh_from_db()
    assert dead_letter.status == DeadLetter.Status.PENDING


@pytest.mark.parametrize("task", ["transcription.transcribe_job", "reports.generate_report"])
def test_a_dead_letter_naming_no_valid_id_is_refused_not_a_500(task):
    dead_letter = DeadLetter.objects.create(
        task_name=f"workers.{task}", task_id="t-5", queue="q", args=["not-a-uuid"]
    )

    with pytest.raises(ConflictError, match="not-a-uuid no longer exists"):
        core_services.dead_letter_requeue(dead_letter=dead_letter)


def test_a_dead_letter_requeued_by_another_operator_meanwhile_is_not_published_twice():
    dead_letter = DeadLetter.objects.create(
        task_name="workers.webhooks.deliver", task_id="t-6", queue="webhooks", args=[7]
    )
    stale = DeadLetter.objects.get(pk=dead_letter.pk)  # a second operator's page or listing

    with mock.patch("lexiscore.celery.app.send_task") as send_task:
        core_services.dead_letter_requeue(dead_letter=dead_letter)
        with pytest.raises(ConflictError, match="requeued already"):
            core_services.dead_letter_requeue(dead_letter=stale)

    dead_letter.refresh_from_db()
    assert send_task.call_count == 1
    assert dead_letter.requeue_count == 1
