"""Legal hold: owners and admins hold a job; while held nothing deletes it or its audio (the
API, the admin, audio retention, the organisation's deletion); releasing it is audited too."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.messages.storage.fallback import FallbackStorage
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Organisation, Role, User
from apps.audio_jobs import services
from apps.audio_jobs.admin import TranscriptionJobAdmin
from apps.audio_jobs.models import TranscriptionJob
from apps.audit.models import AuditAction, AuditEvent
from apps.core.exceptions import ApplicationError
from apps.core.maintenance import audio_retention_cleanup
from tests.audio_jobs.conftest import media_files
from tests.audio_jobs.factories import CompletedJobFactory
from tests.factories import ApiKeyFactory, api_key_header, bearer, member

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs"


def stored_job(organisation, **fields) -> TranscriptionJob:
    job = CompletedJobFactory(organisation=organisation, **fields)
    default_storage.save(job.audio_key, ContentFile(b"audio"))
    return job


def hold(client, auth, job, reason="Matter 2026-114: Smith v. Acme"):
    return client.post(f"{JOBS}/{job.pk}/legal-hold", {"reason": reason}, format="json", **auth)


def release(client, auth, job, **body):
    return client.delete(f"{JOBS}/{job.pk}/legal-hold", body, format="json", **auth)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def test_an_admin_holds_a_job_and_it_cannot_be_deleted_until_released(
    api_client, owner, auth, media_root, django_capture_on_commit_callbacks
):
    job = stored_job(owner.organisation)

    placed = hold(api_client, auth, job)

    assert placed.status_code == 200, placed.content
    assert placed.json()["legal_hold_at"] is not None
    refused = assert_error(api_client.delete(f"{JOBS}/{job.pk}", **auth), 409, "legal_hold")
    assert refused["details"]["job_id"] == str(job.pk)
    assert media_files(media_root) == [job.audio_key]
    event = AuditEvent.objects.get(action=AuditAction.JOB_LEGAL_HOLD_PLACED)
    assert event.metadata["reason"] == "Matter 2026-114: Smith v. Acme"
    assert event.actor_id == owner.user.pk

    released = release(api_client, auth, job, reason="Case closed")
    assert released.status_code == 200 and released.json()["legal_hold_at"] is None
    ended = AuditEvent.objects.get(action=AuditAction.JOB_LEGAL_HOLD_RELEASED)
    assert ended.metadata["hold_reason"] == "Matter 2026-114: Smith v. Acme"
    assert ended.metadata["reason"] == "Case closed" and ended.metadata["held_since"]
    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"{JOBS}/{job.pk}", **auth).status_code == 204
    assert media_files(media_root) == []


def test_holding_a_held_job_changes_nothing_and_releasing_a_free_one_is_refused(
    api_client, owner, auth
):
    job = stored_job(owner.organisation)
    first = hold(api_client, auth, job, reason="First matter").json()["legal_hold_at"]

    again = hold(api_client, auth, job, reason="Second matter")

    assert again.status_code == 200 and again.json()["legal_hold_at"] == first
    job.refresh_from_db()
    assert job.legal_hold_reason == "First matter"
    assert AuditEvent.objects.filter(action=AuditAction.JOB_LEGAL_HOLD_PLACED).count() == 1
    other = stored_job(owner.organisation)
    assert_error(release(api_client, auth, other), 409, "not_held")


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_members_viewers_and_api_keys_cannot_hold_or_release(api_client, owner, role):
    job = stored_job(owner.organisation)
    colleague = member(role, organisation=owner.organisation, email=f"{role}@example.com")
    key = ApiKeyFactory(organisation=owner.organisation, role=Role.MEMBER)

    for auth in (bearer(colleague.user, owner.organisation), api_key_header(key)):
        assert hold(api_client, auth, job).status_code == 403
        assert release(api_client, auth, job).status_code == 403
    job.refresh_from_db()
    assert job.legal_hold_at is None


def test_a_hold_needs_a_reason_and_another_organisations_job_is_not_found(api_client, owner, auth):
    job = stored_job(owner.organisation)
    assert_error(hold(api_client, auth, job, reason=""), 400, "validation_error")
    assert_error(hold(api_client, auth, job, reason="x" * 501), 400, "validation_error")
    assert_error(hold(api_client, auth, job, reason="bad\x00"), 400, "validation_error")
    foreign = stored_job(member(Role.OWNER, email="other@example.com").organisation)
    assert hold(api_client, auth, foreign).status_code == 404


def test_held_jobs_are_listed_by_the_legal_hold_filter(api_client, owner, auth):
    held = stored_job(owner.organisation)
    free = stored_job(owner.organisation)
    hold(api_client, auth, held)

    only_held = api_client.get(JOBS, {"legal_hold": "true"}, **auth).json()["results"]
    not_held = api_client.get(JOBS, {"legal_hold": "false"}, **auth).json()["results"]

    assert [row["id"] for row in only_held] == [str(held.pk)]
    assert [row["id"] for row in not_held] == [str(free.pk)]


def test_audio_retention_keeps_the_audio_of_a_held_job(api_client, owner, auth, media_root):
    held = stored_job(owner.organisation)
    free = stored_job(owner.organisation)
    long_ago = timezone.now() - timedelta(days=400)
    TranscriptionJob.objects.filter(pk__in=[held.pk, free.pk]).update(finished_at=long_ago)
    hold(api_client, auth, held)

    assert audio_retention_cleanup(days=30) == 1

    held.refresh_from_db()
    assert held.audio_key and media_files(media_root) == [held.audio_key]
    release(api_client, auth, held)
    assert audio_retention_cleanup(days=30) == 1
    assert media_files(media_root) == []


def test_an_organisation_with_a_held_job_cannot_be_deleted(api_client, owner, auth):
    job = stored_job(owner.organisation)
    hold(api_client, auth, job)

    with pytest.raises(ApplicationError) as refused, transaction.atomic():
        services.organisation_delete(organisation=owner.organisation)

    assert refused.value.code == "legal_hold" and refused.value.details == {"held_jobs": 1}
    assert Organisation.objects.filter(pk=owner.organisation.pk).exists()
    assert TranscriptionJob.objects.filter(pk=job.pk).exists()


@pytest.fixture
def operator(client):
    client.force_login(User.objects.create_superuser("root@example.com", "a-long-Passphrase-42"))
    return client


def test_the_admin_refuses_to_delete_held_jobs_and_their_organisation(
    operator, api_client, owner, auth, settings, media_root
):
    held = stored_job(owner.organisation)
    free = stored_job(owner.organisation)
    hold(api_client, auth, held)
    base = f"/{settings.ADMIN_URL}"

    page = operator.post(f"{base}audio_jobs/transcriptionjob/{held.pk}/delete/", {"post": "yes"})
    assert page.status_code == 403
    organisation_page = operator.post(
        f"{base}accounts/organisation/{owner.organisation.pk}/delete/", {"post": "yes"}
    )
    assert organisation_page.status_code == 403
    # Django's bulk delete checks every selected row: one held job refuses the whole action.
    bulk = operator.post(
        f"{base}audio_jobs/transcriptionjob/",
        {"action": "delete_selected", "_selected_action": [held.pk, free.pk], "post": "yes"},
    )
    assert bulk.status_code == 403
    assert TranscriptionJob.objects.count() == 2
    free_only = operator.post(
        f"{base}audio_jobs/transcriptionjob/",
        {"action": "delete_selected", "_selected_action": [free.pk], "post": "yes"},
    )
    assert free_only.status_code == 302
    assert list(TranscriptionJob.objects.values_list("pk", flat=True)) == [held.pk]


def test_a_hold_placed_while_the_admin_deletes_keeps_the_job(rf, owner):
    """The race the permission check cannot see: held after the rows were checked."""
    held = stored_job(owner.organisation)
    stored_job(owner.organisation)
    TranscriptionJob.objects.filter(pk=held.pk).update(
        legal_hold_at=timezone.now(), legal_hold_reason="Matter"
    )
    request = rf.post("/")
    request.user = User.objects.create_superuser("root@example.com", "a-long-Passphrase-42")
    request.session = {}
    request._messages = FallbackStorage(request)

    TranscriptionJobAdmin(TranscriptionJob, admin.site).delete_queryset(
        request, TranscriptionJob.objects.order_by("pk")
    )

    assert list(TranscriptionJob.objects.values_list("pk", flat=True)) == [held.pk]
    notes = [str(m) for m in request._messages]
    assert any("under legal hold" in note for note in notes), notes
    assert "Deleted 1 job(s) with their files." in notes


def test_an_operator_releases_holds_from_the_admin(operator, api_client, owner, auth, settings):
    job = stored_job(owner.organisation)
    hold(api_client, auth, job)

    operator.post(
        f"/{settings.ADMIN_URL}audio_jobs/transcriptionjob/",
        {"action": "release_legal_holds", "_selected_action": [job.pk]},
    )

    job.refresh_from_db()
    assert job.legal_hold_at is None
    event = AuditEvent.objects.get(action=AuditAction.JOB_LEGAL_HOLD_RELEASED)
    assert event.metadata["reason"] == "Released by an operator in the admin."
