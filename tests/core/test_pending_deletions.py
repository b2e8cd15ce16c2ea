"""Durable deletion of stored files (apps.core.storage) and the audio retention built on it.

Storage is a FileSystemStorage in a temp folder; a failing storage is its `delete` raising, as
S3 does when it answers 503 or the credentials are refused.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.core import metrics, storage
from apps.core.maintenance import audio_retention_cleanup
from apps.core.models import PendingDeletion
from tests.audio_jobs.factories import CompletedJobFactory

pytestmark = pytest.mark.django_db
FAILING_DELETE = "django.core.files.storage.FileSystemStorage.delete"


def stored(*keys: str) -> list[str]:
    return [default_storage.save(key, ContentFile(b"data")) for key in keys]


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---- delete_files_on_commit --------------------------------------------------------------------
def test_files_are_deleted_after_the_commit_and_their_rows_go(
    media_root, django_capture_on_commit_callbacks
):
    keys = stored("a/one.wav", "a/two.pdf")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        storage.delete_files_on_commit([*keys, keys[0], ""])
    before = files(media_root)
    for callback in callbacks:
        callback()

    assert before == ["a/one.wav", "a/two.pdf"]
    assert files(media_root) == []
    assert PendingDeletion.objects.count() == 0


def test_a_rolled_back_transaction_keeps_the_files_and_records_nothing(media_root):
    keys = stored("a/one.wav")

    with pytest.raises(RuntimeError), transaction.atomic():
        storage.delete_files_on_commit(keys)
        raise RuntimeError("rolled back")

    assert files(media_root) == ["a/one.wav"]
    assert PendingDeletion.objects.count() == 0


def test_a_failed_delete_stays_recorded_with_its_error_and_a_later_try(
    media_root, django_capture_on_commit_callbacks
):
    keys = stored("a/one.wav")
    failures_before = metrics.STORAGE_DELETE_FAILURES.labels("pending")._value.get()

    with (
        mock.patch(FAILING_DELETE, side_effect=OSError("S3 503 SlowDown")),
        django_capture_on_commit_callbacks(execute=True),
    ):
        storage.delete_files_on_commit(keys)

    row = PendingDeletion.objects.get()
    assert files(media_root) == ["a/one.wav"]
    assert (row.key, row.attempts, row.last_error) == ("a/one.wav", 1, "OSError: S3 503 SlowDown")
    assert row.next_attempt_at > timezone.now() + timedelta(minutes=29)
    assert metrics.STORAGE_DELETE_FAILURES.labels("pending")._value.get() == failures_before + 1


def test_a_file_already_gone_counts_as_deleted(media_root, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        storage.delete_files_on_commit(["a/never-stored.wav"])

    assert PendingDeletion.objects.count() == 0


def test_only_the_first_files_are_tried_inline_and_the_sweep_takes_the_rest(
    media_root, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr(storage, "INLINE_LIMIT", 2)
    keys = stored("a/1", "a/2", "a/3")

    with django_capture_on_commit_callbacks(execute=True):
        storage.delete_files_on_commit(keys)
    left = files(media_root)
    swept = storage.pending_deletions_sweep()

    assert left == ["a/3"]
    assert swept == {"deleted": 1, "failed": 0}
    assert files(media_root) == []
    assert PendingDeletion.objects.count() == 0


# ---- the sweep ---------------------------------------------------------------------------------
def test_the_sweep_retries_due_rows_only_and_backs_off_after_each_failure(media_root):
    stored("a/due.wav", "a/later.wav", "a/broken.wav")
    now = timezone.now()
    PendingDeletion.objects.create(key="a/due.wav", attempts=1, next_attempt_at=now)
    PendingDeletion.objects.create(key="a/later.wav", next_attempt_at=now + timedelta(hours=1))
    PendingDeletion.objects.create(key="a/broken.wav", attempts=3, next_attempt_at=now)
    real_delete = default_storage.delete

    def delete(name):
        if name == "a/broken.wav":
            raise PermissionError("AccessDenied")
        real_delete(name)

    with mock.patch.object(default_storage, "delete", side_effect=delete):
        result = storage.pending_deletions_sweep(now=now)

    assert result == {"deleted": 1, "failed": 1}
    assert files(media_root) == ["a/broken.wav", "a/later.wav"]
    broken = PendingDeletion.objects.get(key="a/broken.wav")
    assert broken.attempts == 4
    assert broken.next_attempt_at == now + timedelta(hours=4)  # 30 min * 2^3
    assert broken.last_error == "PermissionError: AccessDenied"
    assert PendingDeletion.objects.filter(key="a/later.wav", attempts=0).exists()


def test_the_backoff_stops_growing_at_a_day(media_root):
    now = timezone.now()
    row = PendingDeletion.objects.create(key="a/x", attempts=30, next_attempt_at=now)

    with mock.patch(FAILING_DELETE, side_effect=OSError("down")):
        storage.pending_deletion_attempt(row=row, now=now)

    row.refresh_from_db()
    assert row.next_attempt_at == now + timedelta(hours=24)


def test_a_delete_failing_again_and_again_is_logged_as_an_error_for_the_operator(
    media_root, caplog
):
    now = timezone.now()
    PendingDeletion.objects.create(
        key="a/x", attempts=storage.ALERT_AFTER_ATTEMPTS - 1, next_attempt_at=now
    )

    with (
        mock.patch(FAILING_DELETE, side_effect=OSError("down")),
        caplog.at_level(logging.WARNING, logger="apps.core.storage"),
    ):
        storage.pending_deletions_sweep(now=now)

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.storage_key for r in errors] == ["a/x"]
    assert "Could not delete stored file a/x (failure 5" in errors[0].getMessage()


def test_the_metrics_show_pending_and_failing_deletions():
    PendingDeletion.objects.create(key="a/1")
    PendingDeletion.objects.create(key="a/2", attempts=storage.ALERT_AFTER_ATTEMPTS)

    families = {f.name: f for f in metrics._pending_deletion_metrics()}

    assert families["lexiscore_storage_deletions_pending"].samples[0].value == 2
    assert families["lexiscore_storage_deletions_failing"].samples[0].value == 1


# ---- discard_file ------------------------------------------------------------------------------
def test_a_discarded_file_is_deleted_at_once(media_root):
    (key,) = stored("a/orphan.wav")

    assert storage.discard_file(key) is True
    assert files(media_root) == []
    assert PendingDeletion.objects.count() == 0


def test_a_discarded_file_whose_delete_fails_is_kept_for_the_sweep(media_root):
    (key,) = stored("a/orphan.wav")

    with mock.patch(FAILING_DELETE, side_effect=OSError("down")):
        deleted = storage.discard_file(key)
    swept = storage.pending_deletions_sweep()

    assert deleted is False
    assert swept == {"deleted": 1, "failed": 0}
    assert files(media_root) == []


# ---- audio retention (F5) ----------------------------------------------------------------------
def old_job(**fields) -> TranscriptionJob:
    job = CompletedJobFactory(**fields)
    TranscriptionJob.objects.filter(pk=job.pk).update(
        finished_at=timezone.now() - timedelta(days=400)
    )
    stored(job.audio_key)
    return job


def test_retention_deletes_old_audio_and_clears_the_key(media_root):
    job = old_job()
    recent = CompletedJobFactory()
    stored(recent.audio_key)

    deleted = audio_retention_cleanup(days=30)

    job.refresh_from_db()
    assert deleted == 1
    assert job.audio_key == ""
    assert files(media_root) == [recent.audio_key]
    from auditlog.models import LogEntry

    latest = LogEntry.objects.get_for_object(job).order_by("-pk").first()
    assert latest.changes_dict["audio_key"][1] == ""  # the history says when the audio went


def test_retention_keeps_the_key_of_audio_it_could_not_delete_and_retries_next_run(media_root):
    job = old_job()
    key = job.audio_key

    with mock.patch(FAILING_DELETE, side_effect=OSError("S3 503 SlowDown")):
        first = audio_retention_cleanup(days=30)
    job.refresh_from_db()
    kept = job.audio_key
    second = audio_retention_cleanup(days=30)

    assert (first, kept) == (0, key)
    assert second == 1
    job.refresh_from_db()
    assert job.audio_key == ""
    assert files(media_root) == []


@pytest.mark.django_db(transaction=True)
def test_retention_leaves_a_job_alone_while_another_transaction_holds_it(media_root):
    # E.g. an operator's retry (job_retry locks the row) that is about to queue the job again.
    job = old_job(status=JobStatus.FAILED)
    locked, release = threading.Event(), threading.Event()

    def hold_the_row():
        try:
            with transaction.atomic():
                TranscriptionJob.objects.select_for_update().get(pk=job.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    locked.wait(10)
    try:
        deleted = audio_retention_cleanup(days=30)
    finally:
        release.set()
        holder.join(10)

    job.refresh_from_db()
    assert deleted == 0
    assert files(media_root) == [job.audio_key]


def test_an_operator_can_try_pending_deletes_now_but_not_delete_their_rows(
    client, settings, media_root
):
    from apps.accounts.models import User

    client.force_login(User.objects.create_superuser("root@example.com", "a-long-Passphrase-42"))
    stored("a/stuck.wav")
    row = PendingDeletion.objects.create(key="a/stuck.wav", attempts=7, last_error="AccessDenied")
    url = f"/{settings.ADMIN_URL}core/pendingdeletion/"

    refused = client.post(f"{url}{row.pk}/delete/", {"post": "yes"})
    response = client.post(
        url, {"action": "attempt_now", "_selected_action": [row.pk]}, follow=True
    )

    assert refused.status_code == 403
    assert "Deleted 1 file(s); 0 still failing." in response.content.decode()
    assert PendingDeletion.objects.count() == 0
    assert files(media_root) == []


def test_the_admin_leaves_rows_written_ahead_of_time_to_come_due(client, settings, media_root):
    """A row due in the future with no attempt guards a file still in use (an upload whose job is
    being created, a presigned form still valid): trying it now would delete that audio."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.accounts.models import User

    client.force_login(User.objects.create_superuser("root@example.com", "a-long-Passphrase-42"))
    stored("a/in-use.wav")
    guard = PendingDeletion.objects.create(
        key="a/in-use.wav", next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    url = f"/{settings.ADMIN_URL}core/pendingdeletion/"

    response = client.post(
        url, {"action": "attempt_now", "_selected_action": [guard.pk]}, follow=True
    )

    assert "1 not tried: written ahead of time" in response.content.decode()
    assert PendingDeletion.objects.filter(pk=guard.pk).exists()
    assert files(media_root) == ["a/in-use.wav"]
