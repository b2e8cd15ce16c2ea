"""A web process killed (SIGKILL at a deploy's graceful timeout, the OOM killer) after storing an
upload's audio and before the job's row commits runs no except clause: the deletion it committed
before storing (`guard_file`) deletes the file once due, so nothing is left untracked."""

from __future__ import annotations

import os
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connections
from django.utils import timezone

from apps.audio_jobs import services
from apps.audio_jobs.models import TranscriptionJob
from apps.core.models import PendingDeletion
from apps.core.storage import GUARD_DELAY, pending_deletions_sweep
from tests.audio_jobs.conftest import create_from_clip, media_files
from tests.factories import OrganisationFactory


def killed_while_creating(organisation, clip) -> int:
    """Run the multipart job creation in a child process that dies as the job's row is written;
    returns its exit code."""
    # The child must not share the parent's sockets: it dies inside a transaction, which would
    # stay open on a pooled connection the parent takes next.
    for connection in connections.all():
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()
    pid = os.fork()
    if pid == 0:
        try:
            with mock.patch.object(services, "_create_job", lambda **kw: os._exit(137)):
                create_from_clip(organisation, clip)
        finally:
            os._exit(1)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.django_db(transaction=True)
def test_audio_stored_by_a_process_killed_before_its_job_committed_is_deleted_later(
    media_root, speech
):
    organisation = OrganisationFactory(plan="enterprise")
    before = timezone.now()

    exit_code = killed_while_creating(organisation, speech.say("Hello there, this is a test."))

    assert exit_code == 137
    assert TranscriptionJob.objects.count() == 0
    (stored,) = media_files(media_root)
    guard = PendingDeletion.objects.get()
    assert guard.key == stored
    assert before + GUARD_DELAY <= guard.next_attempt_at <= timezone.now() + GUARD_DELAY
    assert pending_deletions_sweep() == {"deleted": 0, "failed": 0}  # not due yet
    assert pending_deletions_sweep(now=timezone.now() + GUARD_DELAY) == {"deleted": 1, "failed": 0}
    assert media_files(media_root) == []


@pytest.mark.django_db(transaction=True)
def test_a_committed_job_keeps_its_audio_and_leaves_no_pending_deletion(media_root, speech):
    organisation = OrganisationFactory(plan="enterprise")

    job, created = create_from_clip(organisation, speech.say("Hello there, this is a test."))

    assert created
    assert media_files(media_root) == [job.audio_key]
    assert PendingDeletion.objects.count() == 0
    pending_deletions_sweep(now=timezone.now() + timedelta(days=2))
    assert media_files(media_root) == [job.audio_key]


@pytest.mark.django_db(transaction=True)
def test_a_job_that_failed_to_commit_leaves_neither_file_nor_pending_deletion(media_root, speech):
    organisation = OrganisationFactory(plan="enterprise")

    with (
        mock.patch.object(services, "_create_job", side_effect=RuntimeError("database")),
        pytest.raises(RuntimeError),
    ):
        create_from_clip(organisation, speech.say("Hello there, this is a test."))

    assert media_files(media_root) == []
    assert PendingDeletion.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_guard_that_came_due_before_the_job_committed_refuses_the_job(
    media_root, speech, monkeypatch
):
    """Storing took longer than GUARD_DELAY and the sweep deleted the file: the job must not be
    committed pointing at audio that is gone; the client is told to send it again."""
    from apps.core.exceptions import ApplicationError

    organisation = OrganisationFactory(plan="enterprise")
    store = services.storage.store_file

    def slow_store(path, key):
        stored = store(path, key)
        pending_deletions_sweep(now=timezone.now() + GUARD_DELAY + timedelta(minutes=1))
        return stored

    monkeypatch.setattr(services.storage, "store_file", slow_store)

    with pytest.raises(ApplicationError) as refused:
        create_from_clip(organisation, speech.say("Hello there, this is a test."))

    assert refused.value.code == "upload_interrupted"
    assert refused.value.status_code == 503
    assert not TranscriptionJob.objects.filter(organisation=organisation).exists()
    assert media_files(media_root) == []
    assert not PendingDeletion.objects.exists()
