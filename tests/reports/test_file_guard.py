"""A report's file is guarded like a job's audio (`apps.core.storage.guard_file`): its deletion is
committed before it is stored and called off by the transaction that marks the report ready, so
a worker killed in between (hard time limit, OOM, SIGKILL) leaves no file behind for good."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from apps.core.models import PendingDeletion
from apps.core.storage import GUARD_DELAY, pending_deletions_sweep
from apps.reports import services
from apps.reports.models import Report, ReportStatus


class Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` clause runs (nor would any code at all)."""


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def usage_csv(owner) -> Report:
    return services.report_request(
        organisation=owner.organisation, user=owner.user, kind="usage", format="csv"
    )


def test_a_worker_killed_between_storing_the_file_and_marking_ready_orphans_nothing(
    owner, media_root
):
    report = usage_csv(owner)

    def killed(_report):  # after the file is stored, before the READY commit
        raise Killed()

    with mock.patch.object(services, "_notify_ready", killed), pytest.raises(Killed):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert (report.status, report.file_key) == (ReportStatus.RUNNING, "")
    [first] = files_under(media_root)
    guard = PendingDeletion.objects.get(key=first)
    assert guard.next_attempt_at > timezone.now() + GUARD_DELAY - timedelta(minutes=5)

    # The sweeper republishes the report; the retry stores a file of its own and calls its own
    # guard off. The first file is not due yet: the sweep leaves it.
    assert pending_deletions_sweep() == {"deleted": 0, "failed": 0}
    services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    assert report.status == ReportStatus.READY
    assert report.file_key != first
    assert list(PendingDeletion.objects.values_list("key", flat=True)) == [first]

    # Once due, the sweep deletes the orphan; the ready report's file stays.
    swept = pending_deletions_sweep(now=timezone.now() + GUARD_DELAY + timedelta(minutes=1))

    assert swept == {"deleted": 1, "failed": 0}
    assert files_under(media_root) == [report.file_key]
    assert not PendingDeletion.objects.exists()


def test_a_ready_report_calls_its_guard_off(owner, media_root):
    report = services.report_generate(report_id=str(usage_csv(owner).pk))

    assert report.status == ReportStatus.READY
    assert files_under(media_root) == [report.file_key]
    assert not PendingDeletion.objects.exists()


def test_a_try_that_fails_after_storing_discards_the_file_and_its_guard(owner, media_root):
    report = usage_csv(owner)

    with (
        mock.patch.object(services, "_notify_ready", side_effect=RuntimeError("boom")),
        pytest.raises(RuntimeError),
    ):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert report.status == ReportStatus.QUEUED  # for the retry
    assert files_under(media_root) == []
    assert not PendingDeletion.objects.exists()


def test_a_guard_swept_before_the_commit_fails_the_try_rather_than_pointing_at_no_file(
    owner, media_root
):
    """Storing and committing took longer than GUARD_DELAY: the sweep deleted the file, so the
    report must not become ready with it; the try fails and the retry stores it again."""
    report = usage_csv(owner)
    real_save = default_storage.save

    def slow_save(name, content, **kwargs):
        key = real_save(name, content, **kwargs)
        later = timezone.now() + GUARD_DELAY + timedelta(minutes=1)
        assert pending_deletions_sweep(now=later) == {"deleted": 1, "failed": 0}
        return key

    with (
        mock.patch.object(services.default_storage, "save", slow_save),
        pytest.raises(services.StoredFileLost),
    ):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert (report.status, report.file_key) == (ReportStatus.QUEUED, "")
    assert files_under(media_root) == []
    assert not PendingDeletion.objects.exists()

    assert services.report_generate(report_id=str(report.pk)).status == ReportStatus.READY
