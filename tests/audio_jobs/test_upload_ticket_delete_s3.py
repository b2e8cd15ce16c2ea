"""A pending presigned-upload ticket deleted while its form is still valid (by an operator, or
with its organisation): a POST made after the deletion must not leave an object nothing tracks.
The key is deleted after the commit and again once the form can no longer be used, as when a
ticket becomes a job (moto S3 on loopback, as in test_uploads_s3.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audio_jobs import services
from apps.audio_jobs.models import Upload
from apps.core.models import PendingDeletion
from apps.core.storage import pending_deletions_sweep
from tests.audio_jobs.test_uploads_s3 import exists, s3, s3_endpoint, send, ticket

__all__ = ["s3", "s3_endpoint"]  # fixtures


def delete(how: str, upload: Upload, organisation) -> None:
    if how == "organisation_delete":
        services.organisation_delete(organisation=organisation)
    else:
        services.upload_delete(upload=upload)


@pytest.mark.parametrize("how", ["upload_delete", "organisation_delete"])
def test_a_form_posted_after_its_ticket_was_deleted_leaves_no_object(
    api_client, auth, org, s3, how, django_capture_on_commit_callbacks
):
    body = ticket(api_client, auth, size_bytes=1000)
    upload = Upload.objects.get(pk=body["id"])
    assert send(body, b"x" * 500).status_code == 204

    with django_capture_on_commit_callbacks(execute=True):
        delete(how, upload, org)

    assert not exists(s3, upload.key)  # deleted after the commit, as before
    usable_until = services.upload_usable_until(upload)
    assert list(PendingDeletion.objects.values_list("key", "next_attempt_at")) == [
        (upload.key, usable_until)
    ]

    # The form is still valid: the client's upload (or one already in flight) lands now.
    assert send(body, b"y" * 500).status_code == 204
    assert pending_deletions_sweep() == {"deleted": 0, "failed": 0}  # not due yet

    swept = pending_deletions_sweep(now=usable_until + timedelta(seconds=1))

    assert swept == {"deleted": 1, "failed": 0}
    assert not exists(s3, upload.key)
    assert not PendingDeletion.objects.exists()


@pytest.mark.parametrize("how", ["upload_delete", "organisation_delete"])
def test_a_ticket_past_its_usable_time_needs_no_second_delete(
    api_client, auth, org, s3, how, django_capture_on_commit_callbacks
):
    body = ticket(api_client, auth, size_bytes=1000)
    Upload.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(days=2))
    upload = Upload.objects.get(pk=body["id"])

    with django_capture_on_commit_callbacks(execute=True):
        delete(how, upload, org)

    assert not PendingDeletion.objects.exists()


def test_a_consumed_tickets_delete_schedules_nothing_more(
    api_client, auth, org, s3, django_capture_on_commit_callbacks
):
    """Its object was copied to the job's key and is deleted on its own schedule."""
    body = ticket(api_client, auth, size_bytes=1000)
    Upload.objects.filter(pk=body["id"]).update(status=Upload.Status.CONSUMED)

    with django_capture_on_commit_callbacks(execute=True):
        services.upload_delete(upload=Upload.objects.get(pk=body["id"]))

    assert not PendingDeletion.objects.exists()
