"""Reports under failure: deletes racing a build, a broker that is down, lost messages,
duplicate messages and builds that kill their worker."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.storage import FileSystemStorage, default_storage
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerDown

from apps.accounts.models import Organisation, Role
from apps.audio_jobs import services as job_services
from apps.audio_jobs.models import TranscriptionJob
from apps.core.models import DeadLetter
from apps.reports import rendering, services
from apps.reports.models import Report, ReportStatus
from apps.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.factories import bearer, member
from tests.notify_support import completed_job

PUBLISH = "workers.reports.generate_report.apply_async"


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def subscribe(organisation, *event_types: str) -> None:
    WebhookEndpoint.objects.create(
        organisation=organisation,
        url="https://x.test/",
        event_types=list(event_types),
        secret="whsec_AAAA",
    )


def usage_csv(owner) -> Report:
    return services.report_request(
        organisation=owner.organisation, user=owner.user, kind="usage", format="csv"
    )


# ---- a delete racing the build (F1, F10, F11) ---------------------------------------------------
def test_a_report_deleted_while_it_is_built_stays_deleted_and_its_file_is_discarded(
    owner, media_root
):
    subscribe(owner.organisation, "report.ready", "report.failed")
    report = usage_csv(owner)
    real = rendering.usage_csv

    def render_while_the_user_deletes(data):
        services.report_delete(report=Report.objects.get(pk=report.pk))
        return real(data)

    with mock.patch.object(rendering, "usage_csv", render_while_the_user_deletes):
        outcome = services.report_generate(report_id=str(report.pk))

    assert outcome is None
    assert not Report.objects.filter(pk=report.pk).exists()
    assert files_under(media_root) == []
    assert not WebhookDelivery.objects.exists()
    assert not DeadLetter.objects.exists()


def test_a_report_deleted_while_its_build_fails_is_not_retried_or_reported(owner, media_root):
    subscribe(owner.organisation, "report.failed")
    report = usage_csv(owner)

    def user_deletes_then_render_fails(data):
        services.report_delete(report=Report.objects.get(pk=report.pk))
        raise RuntimeError("renderer crashed")

    with mock.patch.object(rendering, "usage_csv", user_deletes_then_render_fails):
        outcome = services.report_generate(report_id=str(report.pk))

    assert outcome is None
    assert not Report.objects.filter(pk=report.pk).exists()
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_job_deleted_while_its_transcript_report_is_built_ends_quietly(media_root):
    owner = member(Role.OWNER, email="o10@example.com")
    job = completed_job(owner.organisation, owner.user)
    report = services.report_request(
        organisation=owner.organisation,
        user=owner.user,
        kind="transcript",
        format="json",
        job_id=str(job.pk),
    )
    real = rendering.transcript_json

    def render_while_the_job_is_deleted(data):
        job_services.job_delete(job=TranscriptionJob.objects.get(pk=job.pk))
        return real(data)

    with mock.patch.object(rendering, "transcript_json", render_while_the_job_is_deleted):
        outcome = services.report_generate(report_id=str(report.pk))

    assert outcome is None
    assert not Report.objects.filter(pk=report.pk).exists()
    assert files_under(media_root) == []
    assert not DeadLetter.objects.exists()


def test_a_report_that_became_ready_after_it_was_loaded_is_deleted_with_its_file(
    owner, media_root, django_capture_on_commit_callbacks
):
    report = usage_csv(owner)
    loaded_by_the_view = Report.objects.get(pk=report.pk)  # queued, no file yet
    services.report_generate(report_id=str(report.pk))
    assert len(files_under(media_root)) == 1

    with django_capture_on_commit_callbacks(execute=True):
        services.report_delete(report=loaded_by_the_view)

    assert not Report.objects.filter(pk=report.pk).exists()
    assert files_under(media_root) == []


@pytest.mark.django_db(transaction=True)
def test_deleting_a_report_answers_204_when_the_storage_delete_fails(client, media_root):
    """The file is kept in PendingDeletion and deleted by the sweep once storage answers."""
    from apps.core.models import PendingDeletion
    from apps.core.storage import pending_deletions_sweep

    owner = member(Role.OWNER, email="o11@example.com")
    report = usage_csv(owner)
    services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    client.raise_request_exception = False

    with mock.patch.object(FileSystemStorage, "delete", side_effect=OSError("S3 down")):
        response = client.delete(
            f"/api/v1/reports/{report.pk}/", **bearer(owner.user, owner.organisation)
        )

    assert response.status_code == 204
    assert not Report.objects.filter(pk=report.pk).exists()
    pending = PendingDeletion.objects.get(key=report.file_key)
    assert "S3 down" in pending.last_error
    PendingDeletion.objects.filter(pk=pending.pk).update(next_attempt_at=timezone.now())
    pending_deletions_sweep()
    assert not PendingDeletion.objects.exists()
    assert not default_storage.exists(report.file_key)


# ---- a broker that is down, and the sweeper (F3) -----------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_report_requested_while_the_broker_is_down_is_accepted_then_published_by_the_sweeper(
    client,
):
    owner = member(Role.OWNER, email="o3@example.com")
    client.raise_request_exception = False

    with mock.patch(PUBLISH, side_effect=BrokerDown("Error 111 connecting. Refused.")):
        response = client.post(
            "/api/v1/reports/",
            {"kind": "usage", "format": "csv"},
            content_type="application/json",
            **bearer(owner.user, owner.organisation),
        )
    report = Report.objects.get()
    assert response.status_code == 202
    assert (report.status, report.dispatched_at) == (ReportStatus.QUEUED, None)

    with mock.patch(PUBLISH) as publish:
        swept = services.reports_redispatch_stale(now=timezone.now() + timedelta(seconds=20))

    report.refresh_from_db()
    assert swept == {"republished": 1}
    publish.assert_called_once_with(args=[str(report.pk)])
    assert report.dispatched_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_failed_report_retried_while_the_broker_is_down_is_accepted_and_left_to_the_sweeper(
    client,
):
    owner = member(Role.OWNER, email="o3r@example.com")
    report = Report.objects.create(
        organisation=owner.organisation,
        kind="usage",
        format="csv",
        status=ReportStatus.FAILED,
        error_code="generation_failed",
        attempts=3,
        dispatched_at=timezone.now(),
        period_start=date(2030, 1, 1),
        period_end=date(2030, 1, 8),
    )
    client.raise_request_exception = False

    with mock.patch(PUBLISH, side_effect=BrokerDown("connection refused")):
        response = client.post(
            f"/api/v1/reports/{report.pk}/retry/", **bearer(owner.user, owner.organisation)
        )

    report.refresh_from_db()
    assert response.status_code == 202
    assert (report.status, report.attempts, report.error_code) == (ReportStatus.QUEUED, 0, "")
    assert report.dispatched_at is None  # what the sweeper looks for


@pytest.mark.parametrize(
    ("status", "published_seconds_ago", "changed_seconds_ago", "republished"),
    [
        (ReportStatus.QUEUED, None, 5, False),  # just created: its request publishes it
        (ReportStatus.QUEUED, None, 20, True),  # never published (broker down)
        (ReportStatus.QUEUED, 60, 60, False),  # published recently: waits in the queue
        (ReportStatus.QUEUED, 1000, 1000, True),  # published long ago: message lost
        (ReportStatus.QUEUED, 1000, 3, False),  # a failed try just queued it for a retry
        (ReportStatus.RUNNING, 1000, 1000, True),  # its worker was lost with its node
        (ReportStatus.RUNNING, 1000, 60, False),  # claimed recently
        (ReportStatus.READY, 1000, 1000, False),
        (ReportStatus.FAILED, None, 1000, False),
    ],
)
def test_the_sweeper_republishes_only_reports_whose_message_may_be_lost(
    owner, settings, status, published_seconds_ago, changed_seconds_ago, republished
):
    settings.REPORT_REDISPATCH_AFTER_SECONDS = 900
    now = timezone.now()
    report = usage_csv(owner)
    Report.objects.filter(pk=report.pk).update(
        status=status,
        dispatched_at=(
            None
            if published_seconds_ago is None
            else now - timedelta(seconds=published_seconds_ago)
        ),
        updated_at=now - timedelta(seconds=changed_seconds_ago),
    )

    with mock.patch(PUBLISH) as publish:
        swept = services.reports_redispatch_stale(now=now)

    assert swept == {"republished": int(republished)}
    assert publish.call_count == int(republished)


def test_the_report_sweeper_is_scheduled_by_beat(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["redispatch-stale-reports"]

    assert entry["task"] == "workers.reports.redispatch_stale_reports"
    assert entry["schedule"] == 60


@pytest.mark.django_db(transaction=True)
def test_weekly_reports_left_queued_by_a_broker_outage_are_published_by_the_next_run():
    Organisation.objects.create(name="A")
    Organisation.objects.create(name="B")

    with mock.patch(PUBLISH, side_effect=BrokerDown("connection refused")):
        first = services.weekly_usage_reports_create(today=date(2030, 1, 7))
    with mock.patch(PUBLISH) as publish:
        again = services.weekly_usage_reports_create(today=date(2030, 1, 7))

    reports = set(Report.objects.values_list("pk", flat=True))
    assert len(first) == 2 and again == []
    assert {call.kwargs["args"][0] for call in publish.call_args_list} == {str(r) for r in reports}
    assert set(Report.objects.values_list("status", flat=True)) == {ReportStatus.QUEUED}


@pytest.mark.django_db(transaction=True)
def test_one_organisations_failure_does_not_stop_the_weekly_reports_of_the_others():
    broken = Organisation.objects.create(name="Broken")
    Organisation.objects.create(name="Fine")
    real = Report.objects.get_or_create

    def get_or_create(**kwargs):
        if kwargs["organisation"] == broken:
            raise RuntimeError("bad row")
        return real(**kwargs)

    with (
        mock.patch.object(Report.objects, "get_or_create", side_effect=get_or_create),
        mock.patch(PUBLISH) as publish,
        pytest.raises(RuntimeError, match="bad row"),
    ):
        services.weekly_usage_reports_create(today=date(2030, 1, 7))

    fine = Report.objects.get()
    assert fine.organisation.name == "Fine"
    publish.assert_called_once_with(args=[str(fine.pk)])


# ---- duplicate messages ------------------------------------------------------------------------
def test_a_duplicate_message_while_a_worker_builds_the_report_is_dropped(owner, media_root):
    report = usage_csv(owner)
    real = rendering.usage_csv
    duplicates = []

    def render_while_a_duplicate_arrives(data):
        duplicates.append(services.report_generate(report_id=str(report.pk)))
        return real(data)

    with mock.patch.object(rendering, "usage_csv", render_while_a_duplicate_arrives):
        built = services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert duplicates == [None]  # the duplicate rendered nothing
    assert built is not None and report.status == ReportStatus.READY
    assert report.attempts == 1
    assert files_under(media_root) == [report.file_key]


def test_a_duplicate_message_after_the_report_is_ready_does_nothing(owner, media_root):
    report = usage_csv(owner)
    services.report_generate(report_id=str(report.pk))

    with mock.patch.object(rendering, "usage_csv") as render:
        again = services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert again is None
    assert render.call_count == 0
    assert (report.status, report.attempts) == (ReportStatus.READY, 1)


# ---- builds that kill their worker (F7) --------------------------------------------------------
def test_a_report_whose_tries_all_killed_their_worker_fails_and_is_dead_lettered(
    owner, client, auth, settings, django_capture_on_commit_callbacks
):
    from workers.reports import generate_report

    subscribe(owner.organisation, "report.failed")
    report = usage_csv(owner)
    # As after REPORT_MAX_ATTEMPTS deliveries that were each killed mid-build (OOM).
    Report.objects.filter(pk=report.pk).update(
        status=ReportStatus.RUNNING, attempts=settings.REPORT_MAX_ATTEMPTS
    )

    with (
        mock.patch.object(rendering, "usage_csv") as render,
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = generate_report.apply(args=[str(report.pk)])

    shown = client.get(f"/api/v1/reports/{report.pk}/", **auth).json()
    assert result.successful() and result.result is None
    assert render.call_count == 0
    assert shown["status"] == "failed"
    assert shown["error_code"] == "too_many_attempts"
    assert shown["attempts"] == settings.REPORT_MAX_ATTEMPTS
    assert "tried 3 times without finishing" in shown["error_message"]
    dead = DeadLetter.objects.get()
    assert (dead.task_name, dead.args) == ("workers.reports.generate_report", [str(report.pk)])
    assert dead.exception_type == "apps.reports.services.PoisonMessage"
    assert WebhookDelivery.objects.get().event_type == "report.failed"


def test_a_report_whose_worker_died_is_built_again_while_it_has_tries_left(
    owner, settings, media_root
):
    report = usage_csv(owner)
    Report.objects.filter(pk=report.pk).update(
        status=ReportStatus.RUNNING, attempts=settings.REPORT_MAX_ATTEMPTS - 1
    )

    services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert report.status == ReportStatus.READY
    assert report.attempts == settings.REPORT_MAX_ATTEMPTS
    assert report.error_code == ""


def test_a_report_failed_for_good_carries_an_error_code(owner, settings, monkeypatch):
    settings.REPORT_MAX_ATTEMPTS = 1
    report = usage_csv(owner)

    def invalid(data):
        raise rendering.ReportInputError("no such period")

    monkeypatch.setattr(rendering, "usage_csv", invalid)
    with pytest.raises(rendering.ReportInputError):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert (report.status, report.error_code) == (ReportStatus.FAILED, "invalid_input")
    assert report.error_message == "no such period"


# ---- a broker failure after the report is ready ------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_ready_report_keeps_its_file_when_a_notification_publish_fails_after_commit(
    media_root,
):
    owner = member(Role.OWNER, email="o4@example.com")
    subscribe(owner.organisation, "report.ready")
    report = usage_csv(owner)

    with (
        mock.patch("workers.webhooks.deliver.apply_async", side_effect=BrokerDown("refused")),
        mock.patch("workers.emails.send_email.apply_async", side_effect=BrokerDown("refused")),
    ):
        built = services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert built is not None
    assert report.status == ReportStatus.READY
    assert files_under(media_root) == [report.file_key]
    assert not DeadLetter.objects.exists()
