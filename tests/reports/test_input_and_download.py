"""Reports' bad input and missing files answer 4xx/503 with the error body, never 500; a failure's
text for viewers names no server internals."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage

from apps.reports import rendering, services
from apps.reports.models import ReportStatus


@pytest.mark.parametrize(
    "period",
    [
        {"period_end": "0001-01-02"},  # its default start would be before year 1
        {"period_start": "0001-01-01", "period_end": "0001-01-03"},
        {"period_start": "1999-12-01", "period_end": "1999-12-08"},
        {"period_end": "9999-12-31"},
    ],
)
def test_a_period_out_of_range_is_refused(client, auth, period):
    response = client.post(
        "/api/v1/reports/",
        {"kind": "usage", "format": "csv", **period},
        content_type="application/json",
        **auth,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_period"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"kind": "usage", "format": "csv", "job_id": "5f0c8c4e-8a4b-4a57-9d6e-0d2a2c1d3b4a"},
            "A usage report covers a period, not a job: leave out job_id.",
        ),
        (
            {
                "kind": "transcript",
                "format": "pdf",
                "job_id": "5f0c8c4e-8a4b-4a57-9d6e-0d2a2c1d3b4a",
                "period_start": "2026-11-01",
            },
            "A transcript report covers its job: leave out period_start and period_end.",
        ),
    ],
)
def test_an_input_that_does_not_apply_to_the_kind_is_refused_not_ignored(
    client, auth, body, message
):
    response = client.post("/api/v1/reports/", body, content_type="application/json", **auth)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_report_input"
    assert response.json()["error"]["message"] == message


def _ready_report(owner):
    report = services.report_request(
        organisation=owner.organisation, user=owner.user, kind="usage", format="csv"
    )
    services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    assert report.status == ReportStatus.READY
    return report


def test_a_ready_report_whose_file_is_gone_answers_409(owner, client, auth):
    report = _ready_report(owner)
    default_storage.delete(report.file_key)  # a restore without media, a manual cleanup

    response = client.get(f"/api/v1/reports/{report.pk}/download", **auth)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "report_file_missing"


def test_an_unreachable_storage_answers_503_on_download(owner, client, auth, monkeypatch):
    report = _ready_report(owner)

    def unreachable(name):
        raise OSError(113, "No route to host")

    monkeypatch.setattr(default_storage, "exists", unreachable)
    response = client.get(f"/api/v1/reports/{report.pk}/download", **auth)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert "No route" not in response.content.decode()


def test_a_failure_shows_viewers_no_server_internals(owner, client, auth, monkeypatch, settings):
    settings.REPORT_MAX_ATTEMPTS = 1

    def denied(name, content, **kwargs):
        raise PermissionError(13, "Permission denied: '/srv/lexiscore/var/media/reports/x.csv'")

    monkeypatch.setattr(default_storage, "save", denied)
    report = services.report_request(
        organisation=owner.organisation, user=owner.user, kind="usage", format="csv"
    )
    with pytest.raises(PermissionError):
        services.report_generate(report_id=str(report.pk))

    shown = client.get(f"/api/v1/reports/{report.pk}/", **auth).json()
    assert shown["status"] == "failed"
    assert shown["error_message"] == services.GENERATION_FAILED_MESSAGE
    assert "/srv/" not in str(shown)


def test_a_failure_caused_by_the_input_keeps_its_own_words(owner, monkeypatch, settings):
    def refuse(data):
        raise rendering.ReportInputError("The period holds more rows than a report may have.")

    monkeypatch.setattr(rendering, "usage_csv", refuse)
    report = services.report_request(
        organisation=owner.organisation, user=owner.user, kind="usage", format="csv"
    )
    with pytest.raises(rendering.ReportInputError):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert report.status == ReportStatus.FAILED
    assert report.error_message == "The period holds more rows than a report may have."


def test_each_try_stores_its_file_under_a_name_of_its_own(owner):
    """A pending delete of an earlier try's file (apps.core.storage) must never hit a later one."""
    from apps.core.models import PendingDeletion
    from apps.core.storage import pending_deletion_attempt
    from apps.reports.models import Report

    first = _ready_report(owner)
    Report.objects.filter(pk=first.pk).update(status=ReportStatus.RUNNING)
    row = PendingDeletion.objects.create(key=first.file_key)  # the first try's, still pending
    second = services._build(Report.objects.get(pk=first.pk))

    assert pending_deletion_attempt(row=row)
    assert second is not None and second.file_key != first.file_key
    assert default_storage.exists(second.file_key)
    assert not default_storage.exists(first.file_key)


@pytest.mark.parametrize("kind", ["\x00", "nonsense"])
def test_listing_reports_by_an_unknown_kind_is_a_400(client, auth, kind):
    response = client.get("/api/v1/reports/", {"kind": kind}, **auth)

    assert response.status_code == 400
    assert "kind" in response.json()["error"]["details"]


def test_listing_reports_by_kind(owner, client, auth):
    _ready_report(owner)

    usage = client.get("/api/v1/reports/", {"kind": "usage"}, **auth).json()
    transcripts = client.get("/api/v1/reports/", {"kind": "transcript"}, **auth).json()

    assert usage["count"] == 1
    assert transcripts["count"] == 0


def test_fields_a_report_does_not_take_are_refused(client, auth):
    response = client.post(
        "/api/v1/reports/",
        {"kind": "usage", "format": "csv", "organisation": "another"},
        content_type="application/json",
        **auth,
    )

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == ["organisation"]
