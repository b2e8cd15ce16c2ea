"""An operator's requeue of a report's dead letter really builds the report again."""

from __future__ import annotations

from unittest import mock

import pytest

from apps.core import services as core_services
from apps.core.exceptions import ConflictError
from apps.core.models import DeadLetter
from apps.reports import services
from apps.reports.models import ReportStatus


def _dead_letter(report) -> DeadLetter:
    return DeadLetter.objects.create(
        task_name="workers.reports.generate_report",
        task_id="r-1",
        queue="reports",
        args=[str(report.pk)],
    )


def _report(owner, status):
    report = services.report_request(
        organisation=owner.organisation, user=owner.user, kind="usage", format="csv"
    )
    report.status = status
    report.attempts = 3
    report.save(update_fields=["status", "attempts", "updated_at"])
    return report


def test_requeuing_a_failed_reports_dead_letter_builds_it_again(
    owner, django_capture_on_commit_callbacks
):
    report = _report(owner, ReportStatus.FAILED)
    dead_letter = _dead_letter(report)

    with (
        mock.patch("workers.reports.generate_report.apply_async") as publish,
        django_capture_on_commit_callbacks(execute=True),
    ):
        core_services.dead_letter_requeue(dead_letter=dead_letter)
    built = services.report_generate(report_id=str(report.pk))

    dead_letter.refresh_from_db()
    assert dead_letter.status == DeadLetter.Status.REQUEUED
    publish.assert_called_once_with(args=[str(report.pk)])
    assert built is not None and built.status == ReportStatus.READY


def test_a_ready_reports_dead_letter_is_refused_and_stays_pending(owner):
    report = _report(owner, ReportStatus.READY)
    dead_letter = _dead_letter(report)

    with pytest.raises(ConflictError, match="nothing to run again"):
        core_services.dead_letter_requeue(dead_letter=dead_letter)

    dead_letter.refresh_from_db()
    assert dead_letter.status == DeadLetter.Status.PENDING


def test_a_deleted_reports_dead_letter_is_refused(owner):
    report = _report(owner, ReportStatus.FAILED)
    dead_letter = _dead_letter(report)
    report.delete()

    with pytest.raises(ConflictError, match="no longer exists"):
        core_services.dead_letter_requeue(dead_letter=dead_letter)
