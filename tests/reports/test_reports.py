"""Transcript and usage reports: generation, contents of each format, failures and the API."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta

import pytest
from django.utils import timezone
from openpyxl import load_workbook
from pypdf import PdfReader

from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.core.models import DeadLetter
from apps.reports import services
from apps.reports.models import Report, ReportStatus
from tests.factories import member
from tests.notify_support import completed_job


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def generate(organisation, user, **kwargs) -> Report:
    report = services.report_request(organisation=organisation, user=user, **kwargs)
    services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    return report


def request_usage_csv(client, auth, capture_on_commit) -> Report:
    """A usage CSV requested through the API, its task run (eagerly) when the request commits."""
    with capture_on_commit(execute=True):
        response = client.post(
            "/api/v1/reports/",
            {"kind": "usage", "format": "csv"},
            content_type="application/json",
            **auth,
        )
    return Report.objects.get(pk=response.json()["id"])


def content_of(client, auth, report) -> tuple[bytes, object]:
    response = client.get(f"/api/v1/reports/{report.pk}/download", **auth)
    return b"".join(response.streaming_content), response


def test_a_transcript_of_silence_reports_no_language_not_an_empty_probability(owner, client, auth):
    """A job of silence with no language asked for has language "" and probability 0."""
    job = completed_job(owner.organisation, owner.user, words=[(" ", 0.0, 0.1, 0.0)])
    job.transcript.language, job.transcript.language_probability = "", 0.0
    job.transcript.save()

    report = generate(
        owner.organisation, owner.user, kind="transcript", format="pdf", job_id=job.pk
    )
    text = pdf_text(content_of(client, auth, report)[0])

    assert "Language none (no speech)" in " ".join(text.split())
    assert "(0.0)" not in text


def test_transcript_pdf_holds_metadata_analytics_and_the_timed_transcript(owner, client, auth):
    job = completed_job(owner.organisation, owner.user)

    report = generate(
        owner.organisation, owner.user, kind="transcript", format="pdf", job_id=job.pk
    )
    content, response = content_of(client, auth, report)

    assert report.status == ReportStatus.READY
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"].startswith("attachment;")
    text = pdf_text(content)
    for expected in [
        "Transcript report",
        "meeting.wav",
        "tiny.en",
        "Word count",
        "10",
        "Type-token ratio",
        "MTLD",
        "[00:00:00]",
        "Hello world, um",
        "recorded meeting",
        "Filler words",
        "um (1)",
        "budgets (1)",
    ]:
        assert expected in text, expected


def test_transcript_json_holds_the_analytics(owner, client, auth):
    job = completed_job(owner.organisation, owner.user)

    report = generate(
        owner.organisation, owner.user, kind="transcript", format="json", job_id=job.pk
    )
    content, _ = content_of(client, auth, report)

    data = json.loads(content)
    assert data["metadata"]["file"] == "meeting.wav"
    assert data["analytics"]["word_count"] == 10
    assert data["analytics"]["filler_words"] == {"um": 1}
    assert data["analytics"]["long_pauses"] == [{"start": 1.2, "end": 4.0, "duration": 2.8}]
    assert data["analytics"]["low_confidence_passages"][0]["text"] == "recorded meeting"
    assert data["segments"][0]["text"].startswith("Hello world")


def test_transcript_csv_is_the_timed_transcript_one_row_a_segment(owner, client, auth):
    words = [(f" w{i}", float(i), i + 0.5, 0.9) for i in range(25)]  # three segments
    words[0] = ("=SUM(A1:A9)", 0.0, 0.5, 0.9)  # a formula must reach a spreadsheet as text
    job = completed_job(owner.organisation, owner.user, words=words, duration=3700.0)
    job.transcript.segments[2]["start"], job.transcript.segments[2]["end"] = 3661.0, 3670.25
    job.transcript.save()

    report = generate(
        owner.organisation, owner.user, kind="transcript", format="csv", job_id=job.pk
    )
    content, response = content_of(client, auth, report)

    assert report.status == ReportStatus.READY
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert f'filename="transcript-{job.pk}.csv"' in response["Content-Disposition"]
    assert content.startswith(b"\xef\xbb\xbf")  # the byte-order mark Excel needs for UTF-8
    rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
    assert rows[0] == ["start_seconds", "end_seconds", "start", "end", "speaker", "text"]
    assert rows[1][:5] == ["0.00", "9.50", "00:00:00.000", "00:00:09.500", ""]
    assert rows[1][5].startswith("'=SUM(A1:A9) w1 w2")
    assert rows[2] == [
        "10.00",
        "19.50",
        "00:00:10.000",
        "00:00:19.500",
        "",
        "w10" + "".join(f" w{i}" for i in range(11, 20)),
    ]
    assert rows[3][:4] == ["3661.00", "3670.25", "01:01:01.000", "01:01:10.250"]
    assert len(rows) == 4


def test_a_format_the_kind_is_not_made_in_is_refused(client, auth):
    response = client.post(
        "/api/v1/reports/",
        {"kind": "transcript", "format": "xlsx", "job_id": "5f0c8c4e-8a4b-4a57-9d6e-0d2a2c1d3b4a"},
        content_type="application/json",
        **auth,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_report_format"
    assert response.json()["error"]["message"] == (
        "A transcript report is available as csv, json, pdf."
    )
    assert not Report.objects.exists()


@pytest.fixture
def usage_jobs(owner):
    other = member(organisation=owner.organisation, email="=cmd@example.com")
    now = timezone.now()
    for user, status, seconds in [
        (owner.user, JobStatus.COMPLETED, 120),
        (owner.user, JobStatus.FAILED, 60),
        (other.user, JobStatus.COMPLETED, 30),
    ]:
        TranscriptionJob.objects.create(
            organisation=owner.organisation,
            created_by=user,
            status=status,
            duration_seconds=seconds,
            processing_seconds=seconds / 10,
        )
    foreign = member()
    TranscriptionJob.objects.create(
        organisation=foreign.organisation,
        created_by=foreign.user,
        status=JobStatus.COMPLETED,
        duration_seconds=999,
    )
    return now.date()


def test_usage_csv_has_one_row_per_day_and_member_and_a_total(owner, client, auth, usage_jobs):
    report = generate(owner.organisation, owner.user, kind="usage", format="csv")
    content, response = content_of(client, auth, report)

    rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
    assert rows[0] == [
        "day",
        "member",
        "jobs",
        "completed",
        "failed",
        "audio_minutes",
        "processing_seconds",
    ]
    day = usage_jobs.isoformat()
    assert [r[1] for r in rows[1:-1] if r[1].startswith("'")] == ["'=cmd@example.com"]
    assert [day, "owner@example.com", "2", "1", "1", "3.0", "18.0"] in rows
    assert rows[-2] == ["total", "", "3", "2", "1", "3.5", "21.0"]
    # The failed job never started: the plan's quota does not count its minute.
    assert rows[-1] == ["counted_against_quota", "", "", "", "", "2.5", ""]
    assert response["Content-Type"].startswith("text/csv")


def test_usage_report_counts_deleted_jobs_against_the_quota_as_the_ledger_does(owner, client, auth):
    """The jobs' columns describe the jobs that exist; the quota's minutes come from the usage
    ledger, so a deleted job still counts, on its own day, even when no job of that day is left."""
    from apps.audio_jobs import selectors
    from apps.audio_jobs import services as jobs

    today = timezone.now()
    kept = TranscriptionJob.objects.create(
        organisation=owner.organisation,
        created_by=owner.user,
        status=JobStatus.COMPLETED,
        duration_seconds=60,
    )
    gone_today = TranscriptionJob.objects.create(
        organisation=owner.organisation,
        created_by=owner.user,
        status=JobStatus.COMPLETED,
        duration_seconds=30,
    )
    gone_earlier = TranscriptionJob.objects.create(
        organisation=owner.organisation,
        created_by=owner.user,
        status=JobStatus.COMPLETED,
        duration_seconds=90,
    )
    earlier = today - timedelta(days=2)
    TranscriptionJob.objects.filter(pk=gone_earlier.pk).update(created_at=earlier)
    for job in (kept, gone_today, gone_earlier):
        job.refresh_from_db()
        jobs.usage_record(job=job)
    gone_today.delete()
    gone_earlier.delete()

    report = services.report_request(
        organisation=owner.organisation,
        user=owner.user,
        kind="usage",
        format="xlsx",
        period_start=(today - timedelta(days=6)).date(),
        period_end=(today + timedelta(days=1)).date(),
    )
    services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    content, _ = content_of(client, auth, report)

    book = load_workbook(io.BytesIO(content))
    header, *days = book["By day"].iter_rows(values_only=True)
    assert header[-1] == "quota_minutes"
    assert [(row[0].date(), *row[1:]) for row in days] == [
        (earlier.date(), 0, 0, 0, 0, 0, 1.5),
        (today.date(), 1, 1, 0, 1.0, 0.0, 1.5),
    ]
    last = list(book["By day and member"].iter_rows(values_only=True))[-1]
    assert last == ("counted_against_quota", None, None, None, None, 3.0, None)
    used = selectors.audio_seconds_used(
        organisation=owner.organisation, since=today - timedelta(days=6)
    )
    assert used == 180.0


def test_usage_xlsx_has_sheets_by_day_member_and_day(owner, client, auth, usage_jobs):
    report = generate(owner.organisation, owner.user, kind="usage", format="xlsx")
    content, _ = content_of(client, auth, report)

    book = load_workbook(io.BytesIO(content))
    assert book.sheetnames == ["By day and member", "By member", "By day"]
    by_member = {
        row[0]: row[1:] for row in book["By member"].iter_rows(min_row=2, values_only=True)
    }
    assert by_member["owner@example.com"] == (2, 1, 1, 3.0, 18.0)
    first_day = next(book["By day"].iter_rows(min_row=2, values_only=True))
    assert first_day[1:] == (3, 2, 1, 3.5, 21.0, 2.5)


def test_usage_pdf_lists_members_and_totals(owner, client, auth, usage_jobs):
    report = generate(owner.organisation, owner.user, kind="usage", format="pdf")
    content, _ = content_of(client, auth, report)

    text = pdf_text(content)
    assert f"Usage report: {owner.organisation.name}" in text
    assert "Minutes counted against the plan" in text and "2.5" in text
    assert "owner@example.com" in text
    assert "Per day" in text and "3.5" in text


def test_a_failing_generation_is_visible_with_its_reason_retried_then_dead_lettered(
    owner, client, auth, monkeypatch, eager, django_capture_on_commit_callbacks
):
    from apps.reports import rendering

    calls = []

    def broken(data):
        calls.append(1)
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(rendering, "usage_csv", broken)
    report = request_usage_csv(client, auth, django_capture_on_commit_callbacks)

    assert len(calls) == 3  # REPORT_MAX_ATTEMPTS
    assert report.status == ReportStatus.FAILED
    assert report.attempts == 3
    shown = client.get(f"/api/v1/reports/{report.pk}/", **auth).json()
    assert shown["status"] == "failed"
    # The exception's text stays in the logs (it can name paths, buckets, hosts).
    assert shown["error_message"] == services.GENERATION_FAILED_MESSAGE
    dead = DeadLetter.objects.get(task_name="workers.reports.generate_report")
    assert dead.args == [str(report.pk)]


def _report_files(report) -> list[str]:
    from django.core.files.storage import default_storage

    folder = f"reports/{report.organisation_id}/{report.pk}"
    return default_storage.listdir(folder)[1] if default_storage.exists(folder) else []


def test_a_failure_to_store_the_file_is_recorded_and_retried_not_left_running(
    owner, client, auth, monkeypatch, eager, django_capture_on_commit_callbacks
):
    from django.core.files.storage import default_storage

    real_save = default_storage.save
    seen: list[str] = []

    def flaky_save(name, content, **kwargs):
        if not seen:
            seen.append(Report.objects.get().status)  # what the report is while it is built
            raise OSError(28, "No space left on device")
        return real_save(name, content, **kwargs)

    monkeypatch.setattr(default_storage, "save", flaky_save)
    report = request_usage_csv(client, auth, django_capture_on_commit_callbacks)

    assert seen == [ReportStatus.RUNNING]
    assert report.status == ReportStatus.READY  # the second try stored it
    assert report.attempts == 2
    assert report.error_message == ""
    assert _report_files(report) == [report.file_key.rsplit("/", 1)[1]]
    assert report.file_key.endswith(f"-{report.filename}")  # a name of its own per try
    assert not DeadLetter.objects.exists()


def test_a_report_that_cannot_be_marked_ready_leaves_no_file_and_fails_visibly(
    owner, monkeypatch, settings
):
    settings.REPORT_MAX_ATTEMPTS = 1

    def broken_notify(report):
        raise RuntimeError("event store unavailable")

    monkeypatch.setattr(services, "_notify_ready", broken_notify)
    report = services.report_request(
        organisation=owner.organisation, user=owner.user, kind="usage", format="csv"
    )

    with pytest.raises(RuntimeError):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert report.status == ReportStatus.FAILED
    assert report.error_message == services.GENERATION_FAILED_MESSAGE
    assert report.file_key == ""
    assert _report_files(report) == []  # the stored file was removed


def test_a_failed_report_can_be_retried_by_the_api(
    owner, client, auth, eager, django_capture_on_commit_callbacks
):
    report = Report.objects.create(
        organisation=owner.organisation,
        created_by=owner.user,
        kind="usage",
        format="csv",
        status=ReportStatus.FAILED,
        period_start=date.today() - timedelta(days=7),
        period_end=date.today(),
        error_message="old",
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/reports/{report.pk}/retry/", **auth)

    report.refresh_from_db()
    assert response.status_code == 202
    assert report.status == ReportStatus.READY
    assert report.error_message == ""


def test_a_transcript_report_of_an_unfinished_job_is_refused(owner, client, auth):
    job = TranscriptionJob.objects.create(
        organisation=owner.organisation, status=JobStatus.PROCESSING
    )

    response = client.post(
        "/api/v1/reports/",
        {"kind": "transcript", "format": "pdf", "job_id": str(job.pk)},
        content_type="application/json",
        **auth,
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_not_completed"


def test_list_poll_download_before_ready_and_delete(owner, client, auth):
    job = completed_job(owner.organisation, owner.user)
    created = client.post(
        "/api/v1/reports/",
        {"kind": "transcript", "format": "json", "job_id": str(job.pk)},
        content_type="application/json",
        **auth,
    )
    report_id = created.json()["id"]

    early = client.get(f"/api/v1/reports/{report_id}/download", **auth)
    listed = client.get("/api/v1/reports/", **auth).json()
    deleted = client.delete(f"/api/v1/reports/{report_id}/", **auth)

    assert created.status_code == 202 and created.json()["status"] == "queued"
    assert early.status_code == 409
    assert [r["id"] for r in listed["results"]] == [report_id]
    assert deleted.status_code == 204
    assert not Report.objects.filter(pk=report_id).exists()


def test_a_ready_report_publishes_report_ready_to_subscribed_endpoints(owner, monkeypatch):
    from apps.webhooks.models import WebhookDelivery, WebhookEndpoint

    WebhookEndpoint.objects.create(
        organisation=owner.organisation,
        url="https://x.test/",
        event_types=["report.ready"],
        secret="whsec_AAAA",
    )
    job = completed_job(owner.organisation, owner.user)

    report = generate(
        owner.organisation, owner.user, kind="transcript", format="json", job_id=job.pk
    )

    delivery = WebhookDelivery.objects.get(organisation=owner.organisation)
    assert delivery.event_type == "report.ready"
    assert delivery.payload["data"]["report_id"] == str(report.pk)


def test_weekly_usage_reports_are_created_once_per_organisation_and_period(owner):
    first = services.weekly_usage_reports_create(today=date(2030, 1, 7))
    again = services.weekly_usage_reports_create(today=date(2030, 1, 7))

    mine = [r for r in first if r.organisation_id == owner.organisation.pk]
    assert len(mine) == 1
    assert (mine[0].period_start, mine[0].period_end) == (date(2029, 12, 31), date(2030, 1, 7))
    assert again == []


@pytest.mark.parametrize(
    ("text", "font"),
    [
        (" 我们今天讨论预算。", "CJK"),
        (" आज हम बजट पर चर्चा करेंगे।", "Devanagari"),
        (" วันนี้เราคุยเรื่องงบ", "Thai"),
    ],
)
def test_a_transcript_pdf_in_another_script_embeds_a_font_that_has_it(owner, text, font):
    """DejaVu has no CJK, Devanagari or Thai: without a font for them the PDF shows boxes."""
    from django.core.files.storage import default_storage

    job = completed_job(owner.organisation, owner.user, words=[(text, 0.0, 2.0, 0.9)])
    report = generate(
        owner.organisation, owner.user, kind="transcript", format="pdf", job_id=job.pk
    )

    with default_storage.open(report.file_key, "rb") as handle:
        fonts = {
            str(entry.get_object()["/BaseFont"])
            for page in PdfReader(handle).pages
            for entry in (page["/Resources"].get_object().get("/Font") or {}).values()
        }

    assert any(font in name for name in fonts), fonts
