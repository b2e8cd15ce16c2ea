"""Share links: members make a read-only link to a transcript; anyone with it reads the current
revision until it expires or is revoked; every refusal is the same 404; every use is counted and
audited; the token is stored hashed and masked in logs."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs import services
from apps.audio_jobs.editing import transcript_edit
from apps.audio_jobs.models import JobStatus, TranscriptShare
from apps.audit.models import AuditAction, AuditEvent
from apps.core.logging import redact
from tests.audio_jobs.factories import JobFactory, TranscriptFactory
from tests.factories import ApiKeyFactory, api_key_header, bearer, member

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs"


@pytest.fixture
def job(owner):
    return TranscriptFactory(job__organisation=owner.organisation).job


def share(api_client, auth, job, **body):
    return api_client.post(f"{JOBS}/{job.pk}/shares", body, format="json", **auth)


def token_of(response) -> str:
    assert response.status_code == 201, response.content
    return response.json()["url"].rsplit("/", 1)[1]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def test_anyone_with_the_link_reads_the_transcript_and_each_use_is_audited(
    api_client, client, owner, auth, job
):
    created = share(api_client, auth, job, expires_in_days=3, note="For the court reporter")
    token = token_of(created)

    body = created.json()
    assert body["active"] is True and body["access_count"] == 0
    assert body["note"] == "For the court reporter" and token.startswith(body["token_prefix"])
    stored = TranscriptShare.objects.get(pk=body["id"])
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(stored.__dict__)  # only its hash is kept

    opened = client.get(f"/api/v1/shared/{token}", HTTP_AUTHORIZATION="Bearer nonsense")
    assert opened.status_code == 200, opened.content
    assert opened.json()["text"] == job.transcript.text
    assert opened.json()["segments"][0].keys() == {"start", "end", "text"}
    assert opened["Cache-Control"] == "private, no-store"
    assert opened["X-Robots-Tag"].startswith("noindex")
    srt = client.get(f"/api/v1/shared/{token}", {"format": "srt"})
    assert srt.status_code == 200 and srt.content.startswith(b"1\n")
    stored.refresh_from_db()
    assert stored.access_count == 2 and stored.last_accessed_at is not None
    uses = AuditEvent.objects.filter(action=AuditAction.TRANSCRIPT_SHARE_ACCESSED)
    assert uses.count() == 2 and uses.first().metadata["job_id"] == str(job.pk)
    assert AuditEvent.objects.filter(action=AuditAction.TRANSCRIPT_SHARED).count() == 1


def test_a_link_serves_the_current_revision(api_client, client, auth, job):
    token = token_of(share(api_client, auth, job))
    transcript_edit(job=job, revision=0, segments=[{"id": 0, "text": "Corrected words."}])

    opened = client.get(f"/api/v1/shared/{token}").json()

    assert opened["revision"] == 1
    assert opened["segments"][0]["text"].strip() == "Corrected words."


def test_expired_revoked_disabled_and_unknown_links_all_answer_the_same_404(
    api_client, client, owner, auth, job
):
    from apps.core.metrics import SHARE_LINK_USES

    refused_before = SHARE_LINK_USES.labels("refused")._value.get()
    expired, revoked, disabled = (token_of(share(api_client, auth, job)) for _ in range(3))
    TranscriptShare.objects.filter(token_hash=hashlib.sha256(expired.encode()).hexdigest()).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    revoked_id = TranscriptShare.objects.get(
        token_hash=hashlib.sha256(revoked.encode()).hexdigest()
    ).pk
    assert api_client.delete(f"{JOBS}/{job.pk}/shares/{revoked_id}", **auth).status_code == 204
    assert api_client.delete(f"{JOBS}/{job.pk}/shares/{revoked_id}", **auth).status_code == 204
    bodies = []
    for token in (expired, revoked, "lxs_" + "A" * 43, "nope", "lxs_%2e%2e"):
        response = client.get(f"/api/v1/shared/{token}")
        bodies.append(assert_error(response, 404, "share_not_found")["message"])
    owner.organisation.share_links_enabled = False
    owner.organisation.save()
    bodies.append(
        assert_error(client.get(f"/api/v1/shared/{disabled}"), 404, "share_not_found")["message"]
    )
    assert len(set(bodies)) == 1
    assert SHARE_LINK_USES.labels("refused")._value.get() - refused_before == 6
    assert AuditEvent.objects.filter(action=AuditAction.TRANSCRIPT_SHARE_REVOKED).count() == 1


def test_a_deleted_job_takes_its_links_with_it(api_client, client, auth, job):
    token = token_of(share(api_client, auth, job))

    with transaction.atomic():
        services.job_delete(job=job)

    assert_error(client.get(f"/api/v1/shared/{token}"), 404, "share_not_found")
    assert not TranscriptShare.objects.exists()


def test_who_may_share_and_what(api_client, owner, auth, job):
    viewer = member(Role.VIEWER, organisation=owner.organisation, email="v@example.com")
    assert share(api_client, bearer(viewer.user, owner.organisation), job).status_code == 403
    key = ApiKeyFactory(organisation=owner.organisation, role=Role.MEMBER)
    assert share(api_client, api_key_header(key), job).status_code == 201
    queued = JobFactory(organisation=owner.organisation, status=JobStatus.QUEUED)
    assert_error(share(api_client, auth, queued), 409, "transcript_not_ready")
    assert_error(share(api_client, auth, job, expires_in_days=31), 400, "validation_error")
    assert_error(share(api_client, auth, job, expires_in_days=0), 400, "validation_error")
    assert_error(share(api_client, auth, job, note="x\x00"), 400, "validation_error")
    owner.organisation.share_links_enabled = False
    owner.organisation.save()
    assert_error(share(api_client, auth, job), 403, "sharing_disabled")


def test_a_job_has_a_bounded_number_of_live_links(api_client, auth, job, settings):
    settings.SHARE_LINKS_PER_JOB = 2
    first = share(api_client, auth, job).json()
    share(api_client, auth, job)

    assert_error(share(api_client, auth, job), 409, "too_many_shares")
    api_client.delete(f"{JOBS}/{job.pk}/shares/{first['id']}", **auth)
    assert share(api_client, auth, job).status_code == 201


def test_the_list_shows_links_without_their_tokens(api_client, auth, job):
    token = token_of(share(api_client, auth, job))

    listed = api_client.get(f"{JOBS}/{job.pk}/shares", **auth)

    assert listed.status_code == 200
    assert len(listed.json()) == 1 and "url" not in listed.json()[0]
    assert token not in listed.content.decode()


def test_tokens_are_masked_in_logs_and_error_reports():
    from apps.core.observability import before_send

    token = "lxs_" + "b" * 43
    assert token not in redact(f'"GET /api/v1/shared/{token} HTTP/1.1" 200')
    event = before_send(
        {
            "type": "transaction",
            "request": {"url": f"https://x.test/api/v1/shared/{token}"},
            "breadcrumbs": {"values": [{"message": f"GET /api/v1/shared/{token}", "data": {}}]},
        },
        {},
    )
    assert token not in repr(event)


def test_sentry_scrubs_performance_transactions_too(settings, monkeypatch):
    import sentry_sdk

    from apps.core import observability

    given = {}
    monkeypatch.setattr(sentry_sdk, "init", lambda **kwargs: given.update(kwargs))
    settings.SENTRY_DSN = "https://public@sentry.example/1"

    assert observability.init_sentry()
    assert given["before_send_transaction"] is observability.before_send


def test_admins_switch_share_links_off_and_on(api_client, client, owner, auth, job):
    token = token_of(share(api_client, auth, job))
    url = f"/api/v1/organisations/{owner.organisation.pk}/"

    off = api_client.patch(url, {"share_links_enabled": False}, format="json", **auth)

    assert off.status_code == 200 and off.json()["share_links_enabled"] is False
    assert_error(client.get(f"/api/v1/shared/{token}"), 404, "share_not_found")
    api_client.patch(url, {"share_links_enabled": True}, format="json", **auth)
    assert client.get(f"/api/v1/shared/{token}").status_code == 200
    changes = AuditEvent.objects.filter(action=AuditAction.ORGANISATION_UPDATED)
    assert sorted(e.metadata["share_links_enabled"] for e in changes) == [
        [False, True],
        [True, False],
    ]


def test_a_head_request_is_answered_but_not_counted(api_client, client, auth, job):
    token = token_of(share(api_client, auth, job))

    assert client.head(f"/api/v1/shared/{token}").status_code == 200

    assert TranscriptShare.objects.get().access_count == 0
    assert not AuditEvent.objects.filter(action=AuditAction.TRANSCRIPT_SHARE_ACCESSED).exists()


def test_links_end_with_the_access_of_whoever_made_them(api_client, client, owner, auth, job):
    from apps.accounts.models import ApiKey
    from apps.accounts.network import RequestMeta
    from apps.accounts.services import api_key_revoke, membership_remove

    colleague = member(Role.MEMBER, organisation=owner.organisation, email="c@example.com")
    by_colleague = token_of(share(api_client, bearer(colleague.user, owner.organisation), job))
    key = ApiKeyFactory(organisation=owner.organisation, role=Role.MEMBER)
    by_key = token_of(share(api_client, api_key_header(key), job))
    by_owner = token_of(share(api_client, auth, job))
    meta = RequestMeta(ip="127.0.0.1", user_agent="test", request_id="r")
    owner_membership = owner

    membership_remove(actor=owner_membership, membership=colleague, meta=meta)
    api_key_revoke(actor=owner_membership, api_key=ApiKey.objects.get(pk=key.pk), meta=meta)

    for token in (by_colleague, by_key):
        assert_error(client.get(f"/api/v1/shared/{token}"), 404, "share_not_found")
    assert client.get(f"/api/v1/shared/{by_owner}").status_code == 200
    reasons = {
        e.metadata.get("reason")
        for e in AuditEvent.objects.filter(action=AuditAction.TRANSCRIPT_SHARE_REVOKED)
    }
    assert "api_key_revoked" in reasons and len(reasons) == 2
