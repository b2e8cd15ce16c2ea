"""Data exports (reports of kind `export`): the archive of each scope, who may ask for and read
one, audio and its cap, secrets, failures, retention and the limits."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import timedelta
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs.models import AudioUsage
from apps.audit.models import AuditEvent
from apps.audit.services import audit_record
from apps.core.models import PendingDeletion
from apps.feed.models import FeedEvent
from apps.reports import exports, services
from apps.reports.models import Report, ReportKind, ReportStatus
from apps.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.factories import ApiKeyFactory, api_key_header, bearer, member
from tests.notify_support import completed_job

WEBHOOK_SECRET = "whsec_export_must_never_show_1234567890"
AUDIO = b"RIFF" + bytes(range(256)) * 40  # 10244 bytes


@pytest.fixture
def org(owner, media_root):
    """Organisation A: its owner, a member (alice) and a viewer, each with their own data; and
    organisation B, whose data no export of A may hold."""
    organisation = owner.organisation
    alice = member(Role.MEMBER, organisation, email="alice@example.com")
    viewer = member(Role.VIEWER, organisation, email="viewer@example.com")
    owner_job = completed_job(organisation, owner.user, filename="owner-board.wav")
    alice_job = completed_job(organisation, alice.user, filename="alice-interview.wav")
    for job in (owner_job, alice_job):
        job.audio_key = default_storage.save(
            f"org/{organisation.pk}/audio/{job.pk}.wav", ContentFile(AUDIO)
        )
        job.size_bytes = len(AUDIO)
        job.save(update_fields=["audio_key", "size_bytes"])
        AudioUsage.objects.create(
            job_id=job.pk, organisation=organisation, seconds=20.0, job_created_at=job.created_at
        )
    owner_key = ApiKeyFactory(organisation=organisation, created_by=owner.user, name="owner-ci")
    alice_key = ApiKeyFactory(organisation=organisation, created_by=alice.user, name="alice-ci")
    endpoint = WebhookEndpoint.objects.create(
        organisation=organisation,
        created_by=owner.user,
        url="https://hooks.example.com/lexis",
        secret=WEBHOOK_SECRET,
        event_types=["job.completed"],
    )
    WebhookDelivery.objects.create(
        organisation=organisation,
        endpoint=endpoint,
        event_id="evt_1",
        event_type="job.completed",
        payload={"job_id": str(owner_job.pk)},
    )
    audit_record(
        action="job.created", actor=owner.user, organisation=organisation, target=owner_job
    )
    audit_record(
        action="job.created", actor=alice.user, organisation=organisation, target=alice_job
    )
    other = member(Role.OWNER, email="other-owner@example.com")
    other_job = completed_job(other.organisation, other.user, filename="other-org.wav")
    return {
        "organisation": organisation,
        "owner": owner,
        "alice": alice,
        "viewer": viewer,
        "owner_job": owner_job,
        "alice_job": alice_job,
        "owner_key": owner_key,
        "alice_key": alice_key,
        "other": other,
        "other_job": other_job,
    }


def build(membership, *, scope: str, include_audio: bool = False) -> Report:
    report = services.export_request(
        organisation=membership.organisation,
        user=membership.user,
        role=membership.role,
        scope=scope,
        include_audio=include_audio,
    )
    services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    return report


def unzip(report: Report) -> tuple[zipfile.ZipFile, dict[str, bytes]]:
    with default_storage.open(report.file_key, "rb") as handle:
        archive = zipfile.ZipFile(io.BytesIO(handle.read()))
    assert archive.testzip() is None
    return archive, {name: archive.read(name) for name in archive.namelist()}


def jsonl(content: bytes) -> list[dict]:
    return [json.loads(line) for line in content.decode().splitlines()]


def check_manifest(files: dict[str, bytes]) -> dict:
    manifest = json.loads(files["manifest.json"])
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json"}
    for path, entry in listed.items():
        assert entry["size"] == len(files[path])
        assert entry["sha256"] == hashlib.sha256(files[path]).hexdigest()
    return manifest


# ---- Contents -----------------------------------------------------------------------------------
def test_an_organisation_export_holds_all_its_data_and_the_manifest_hashes_every_file(org):
    from apps.audio_jobs.shares import share_create

    owner = org["owner"]
    share, token = share_create(
        organisation=owner.organisation,
        job_id=org["owner_job"].pk,
        user=owner.user,
        expires_in_days=7,
        note="For counsel",
    )

    report = build(owner, scope="organisation")
    _archive, files = unzip(report)

    assert report.status == ReportStatus.READY
    assert report.filename.startswith("export-organisation-") and report.filename.endswith(".zip")
    assert report.expires_at - report.finished_at == timedelta(days=7)
    manifest = check_manifest(files)
    assert manifest["format_version"] == 1
    assert manifest["scope"] == "organisation"
    assert manifest["organisation"] == {
        "id": str(owner.organisation.pk),
        "name": owner.organisation.name,
    }
    assert manifest["requested_by"]["email"] == "owner@example.com"
    assert manifest["counts"] == {
        "members": 3,
        "invitations": 0,
        "jobs": 2,
        "transcripts": 2,
        "transcript_revisions": 0,
        "usage_rows": 2,
        "api_keys": 2,
        "share_links": 1,
        "webhook_endpoints": 1,
        "webhook_deliveries": 1,
        "audit_events": 4,  # the two jobs', transcript.shared and export.requested
        "reports": 0,
        "audio_files": 0,
    }
    assert json.loads(files["organisation.json"])["name"] == owner.organisation.name
    members = json.loads(files["members.json"])
    assert sorted(m["user"]["email"] for m in members) == [
        "alice@example.com",
        "owner@example.com",
        "viewer@example.com",
    ]
    jobs = jsonl(files["jobs.jsonl"])
    assert {j["id"] for j in jobs} == {str(org["owner_job"].pk), str(org["alice_job"].pk)}
    assert jobs[0]["engine"] == "faster-whisper" and jobs[0]["model_used"] == "tiny.en"
    assert "audio_key" not in jobs[0] and jobs[0]["audio_stored"] is True
    job_id = org["owner_job"].pk
    transcript = json.loads(files[f"transcripts/{job_id}.json"])
    assert transcript["text"].strip().startswith("Hello world")
    assert files[f"transcripts/{job_id}.srt"].startswith(b"1\n00:00:00,000 --> ")
    assert files[f"transcripts/{job_id}.vtt"].startswith(b"WEBVTT")
    assert b"budgets." in files[f"transcripts/{job_id}.txt"]
    usage = list(csv.reader(io.StringIO(files["usage.csv"].decode())))
    assert usage[0] == ["job_id", "seconds", "job_created_at", "recorded_at"]
    assert sorted(row[1] for row in usage[1:]) == ["20.000", "20.000"]
    keys = json.loads(files["api_keys.json"])
    assert sorted(k["name"] for k in keys) == ["alice-ci", "owner-ci"]
    [shared] = json.loads(files["share_links.json"])
    assert shared["note"] == "For counsel" and shared["id"] == str(share.pk)
    assert "token_hash" not in shared and token.encode() not in b"".join(files.values())
    assert share.token_hash.encode() not in b"".join(files.values())
    endpoint = json.loads(files["webhook_endpoints.json"])[0]
    assert endpoint["url"] == "https://hooks.example.com/lexis"
    assert "secret" not in endpoint and "previous_secret" not in endpoint
    assert jsonl(files["webhook_deliveries.jsonl"])[0]["event_id"] == "evt_1"
    actions = [e["action"] for e in jsonl(files["audit_events.jsonl"])]
    assert actions == ["job.created", "job.created", "transcript.shared", "export.requested"]
    assert files["reports.jsonl"] == b""
    assert not any(name.startswith("audio/") for name in files)


def test_a_member_export_holds_their_data_and_nothing_of_other_members(org):
    alice, owner = org["alice"], org["owner"]
    services.report_delete(report=build(owner, scope="organisation"))  # owner's own report

    report = build(alice, scope="member")
    _archive, files = unzip(report)

    manifest = check_manifest(files)
    assert manifest["scope"] == "member"
    assert manifest["requested_by"]["email"] == "alice@example.com"
    assert set(files) == {
        "manifest.json",
        "organisation.json",
        "user.json",
        "memberships.json",
        "notification_preferences.json",
        "jobs.jsonl",
        f"transcripts/{org['alice_job'].pk}.json",
        f"transcripts/{org['alice_job'].pk}.srt",
        f"transcripts/{org['alice_job'].pk}.vtt",
        f"transcripts/{org['alice_job'].pk}.txt",
        f"transcripts/{org['alice_job'].pk}.revisions.json",
        "usage.csv",
        "api_keys.json",
        "share_links.json",
        "audit_events.jsonl",
        "reports.jsonl",
    }
    assert json.loads(files["user.json"])["email"] == "alice@example.com"
    memberships = json.loads(files["memberships.json"])
    assert [(m["user"]["email"], m["role"]) for m in memberships] == [
        ("alice@example.com", "member")
    ]
    assert json.loads(files["notification_preferences.json"])["report"] is True
    assert [j["id"] for j in jsonl(files["jobs.jsonl"])] == [str(org["alice_job"].pk)]
    assert [row[0] for row in csv.reader(io.StringIO(files["usage.csv"].decode()))][1:] == [
        str(org["alice_job"].pk)
    ]
    assert [k["name"] for k in json.loads(files["api_keys.json"])] == ["alice-ci"]
    events = jsonl(files["audit_events.jsonl"])
    assert {e["actor_email"] for e in events} == {"alice@example.com"}
    assert [e["action"] for e in events] == ["job.created", "export.requested"]
    everything = b"".join(files.values())
    for foreign in (
        b"owner@example.com",
        b"viewer@example.com",
        b"owner-board.wav",
        str(org["owner_job"].pk).encode(),
        org["owner_key"].prefix.encode(),
        str(org["other_job"].pk).encode(),
        b"hooks.example.com",
    ):
        assert foreign not in everything


def test_no_secret_is_anywhere_in_the_archive(org):
    owner, key = org["owner"], org["owner_key"]

    _archive, files = unzip(build(owner, scope="organisation", include_audio=True))

    everything = b"".join(files.values())
    assert key.prefix.encode() in everything  # metadata is there...
    for secret in (WEBHOOK_SECRET, key.raw_key, key.key_hash, org["alice_key"].raw_key):
        assert secret.encode() not in everything  # ...never a secret nor a hash
    endpoint_row = WebhookEndpoint.objects.get()
    assert endpoint_row.secret == WEBHOOK_SECRET  # the secret that was looked for is real


# ---- Audio --------------------------------------------------------------------------------------
def test_audio_is_stored_uncompressed_under_its_job(org):
    report = build(org["owner"], scope="organisation", include_audio=True)
    archive, files = unzip(report)

    manifest = check_manifest(files)
    name = f"audio/{org['owner_job'].pk}.wav"
    assert files[name] == AUDIO
    assert archive.getinfo(name).compress_type == zipfile.ZIP_STORED
    assert manifest["counts"]["audio_files"] == 2
    assert manifest["notes"]["audio_missing"] == []


def test_audio_over_the_cap_is_refused_when_asked(org, api_client, settings):
    settings.EXPORT_MAX_AUDIO_BYTES = len(AUDIO)  # one file fits, two do not

    response = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": "organisation", "include_audio": True},
        format="json",
        **bearer(org["owner"].user, org["organisation"]),
    )
    alone = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": "member", "include_audio": True},
        format="json",
        **bearer(org["alice"].user, org["organisation"]),
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "export_audio_too_large"
    assert error["details"] == {"audio_bytes": 2 * len(AUDIO), "max_bytes": len(AUDIO)}
    assert alone.status_code == 202  # alice's one file fits


def test_audio_that_grew_past_the_cap_fails_the_export_with_its_code(org, settings, media_root):
    report = services.export_request(
        organisation=org["organisation"],
        user=org["owner"].user,
        role=Role.OWNER,
        scope="organisation",
        include_audio=True,
    )
    settings.EXPORT_MAX_AUDIO_BYTES = len(AUDIO) + 1

    with pytest.raises(exports.ExportAudioTooLarge):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert (report.status, report.error_code) == (ReportStatus.FAILED, "export_audio_too_large")
    assert "EXPORT_MAX_AUDIO_BYTES" in report.error_message
    assert not (media_root / "reports").exists() or not any((media_root / "reports").rglob("*.*"))


# ---- Failure leaves nothing ---------------------------------------------------------------------
def test_a_storage_failure_closes_the_temp_file_and_leaves_no_file(org, media_root):
    report = services.export_request(
        organisation=org["organisation"], user=org["owner"].user, role=Role.OWNER, scope="member"
    )
    opened = []
    real = exports.export_temp_file

    def spy():
        handle = real()
        opened.append(handle)
        return handle

    with (
        mock.patch.object(exports, "export_temp_file", spy),
        mock.patch.object(default_storage, "save", side_effect=OSError("disk full")),
        pytest.raises(OSError),
    ):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert len(opened) == 1 and opened[0].closed
    assert (report.status, report.attempts, report.file_key) == (ReportStatus.QUEUED, 1, "")
    assert not (media_root / "reports").exists()
    assert PendingDeletion.objects.count() == 0  # the guard was called off


def test_the_temp_file_has_no_name_to_leave_behind(settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)

    with exports.export_temp_file() as handle:
        handle.write(b"zip bytes")
        listed = list(tmp_path.iterdir())

    assert listed == []


# ---- Who may ask, and who may read --------------------------------------------------------------
@pytest.mark.parametrize(
    ("who", "scope", "expected"),
    [
        ("viewer", "member", 202),
        ("alice", "member", 202),
        ("owner", "member", 202),
        ("owner", "organisation", 202),
        ("viewer", "organisation", 403),
        ("alice", "organisation", 403),
    ],
)
def test_who_may_ask_for_which_export(org, api_client, who, scope, expected):
    membership = org[who]

    response = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": scope},
        format="json",
        **bearer(membership.user, membership.organisation),
    )

    assert response.status_code == expected
    if expected == 202:
        body = response.json()
        assert (body["kind"], body["format"], body["export_scope"]) == ("export", "zip", scope)
        assert body["status"] == "queued" and body["include_audio"] is False
        event = AuditEvent.objects.get(action="export.requested")
        assert event.actor == membership.user
        assert event.metadata == {"scope": scope, "include_audio": False}
    else:
        assert response.json()["error"]["code"] == "insufficient_role"
        assert not Report.objects.filter(kind=ReportKind.EXPORT).exists()


@pytest.mark.parametrize("scope", ["member", "organisation"])
def test_api_keys_cannot_ask_for_exports(org, api_client, scope):
    key = ApiKeyFactory(organisation=org["organisation"], role=Role.MEMBER)

    response = api_client.post(
        "/api/v1/reports/exports/", {"scope": scope}, format="json", **api_key_header(key)
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "export_needs_user"
    assert not Report.objects.filter(kind=ReportKind.EXPORT).exists()


def test_exports_are_not_asked_for_through_the_report_endpoint(org, api_client):
    response = api_client.post(
        "/api/v1/reports/",
        {"kind": "export", "format": "zip"},
        format="json",
        **bearer(org["owner"].user, org["organisation"]),
    )

    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"kind", "format"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"scope": "everyone"},
        {"scope": "member", "include_audio": "maybe"},
        {"scope": "member", "job_id": "x"},
    ],
)
def test_invalid_export_input_is_400(org, api_client, body):
    response = api_client.post(
        "/api/v1/reports/exports/",
        body,
        format="json",
        **bearer(org["owner"].user, org["organisation"]),
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_exports_are_seen_only_by_whom_they_belong_to(org, api_client):
    organisation = org["organisation"]
    owners = build(org["owner"], scope="organisation")
    alices = Report.objects.create(
        organisation=organisation,
        created_by=org["alice"].user,
        kind=ReportKind.EXPORT,
        format="zip",
        export_scope="member",
        status=ReportStatus.FAILED,
    )
    key = ApiKeyFactory(organisation=organisation, role=Role.MEMBER)
    readers = {
        "owner": bearer(org["owner"].user, organisation),
        "alice": bearer(org["alice"].user, organisation),
        "viewer": bearer(org["viewer"].user, organisation),
        "key": api_key_header(key),
    }

    listed = {
        who: {r["id"] for r in api_client.get("/api/v1/reports/", **auth).json()["results"]}
        for who, auth in readers.items()
    }
    details = {
        who: (
            api_client.get(f"/api/v1/reports/{owners.pk}/", **auth).status_code,
            api_client.get(f"/api/v1/reports/{alices.pk}/", **auth).status_code,
            api_client.get(f"/api/v1/reports/{owners.pk}/download", **auth).status_code,
        )
        for who, auth in readers.items()
    }

    assert listed == {
        "owner": {str(owners.pk)},
        "alice": {str(alices.pk)},
        "viewer": set(),
        "key": set(),
    }
    assert details == {
        "owner": (200, 404, 200),
        "alice": (404, 200, 404),
        "viewer": (404, 404, 404),
        "key": (404, 404, 404),
    }


def test_another_organisation_gets_404_for_an_export(org, api_client, media_root):
    report = build(org["owner"], scope="organisation")
    auth = bearer(org["other"].user, org["other"].organisation)

    responses = [
        api_client.get(f"/api/v1/reports/{report.pk}/", **auth),
        api_client.get(f"/api/v1/reports/{report.pk}/download", **auth),
        api_client.delete(f"/api/v1/reports/{report.pk}/", **auth),
        api_client.post(f"/api/v1/reports/{report.pk}/retry/", **auth),
    ]

    assert [r.status_code for r in responses] == [404, 404, 404, 404]
    assert {r.json()["error"]["code"] for r in responses} == {"report_not_found"}
    assert Report.objects.filter(pk=report.pk, status=ReportStatus.READY).exists()
    assert default_storage.exists(report.file_key)


def test_a_download_is_audited_and_served_as_a_zip(org, api_client):
    report = build(org["alice"], scope="member")

    response = api_client.get(
        f"/api/v1/reports/{report.pk}/download", **bearer(org["alice"].user, org["organisation"])
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    content = b"".join(response.streaming_content)
    assert zipfile.ZipFile(io.BytesIO(content)).read("user.json")
    event = AuditEvent.objects.get(action="export.downloaded")
    assert (event.actor, event.target_id) == (org["alice"].user, str(report.pk))


def test_an_export_is_never_on_the_live_feed_nor_sent_to_webhooks(org, api_client):
    # The feed is the organisation's (every member, viewer and API key reads it): a member's
    # export is told to them only, by email (and the report they can poll).
    WebhookEndpoint.objects.create(
        organisation=org["organisation"],
        created_by=org["owner"].user,
        url="https://hooks.example.com/reports",
        secret=WEBHOOK_SECRET,
        event_types=["report.ready", "report.failed"],
    )
    ready = build(org["alice"], scope="member")
    org_export = build(org["owner"], scope="organisation")
    failed = services.export_request(
        organisation=org["organisation"], user=org["viewer"].user, role="viewer", scope="member"
    )
    with (
        mock.patch.object(exports, "build_export", side_effect=exports.ExportNotAllowed("no")),
        pytest.raises(exports.ExportNotAllowed),
    ):
        services.report_generate(report_id=str(failed.pk))
    key = ApiKeyFactory(organisation=org["organisation"], role=Role.VIEWER)

    subjects = {ready.pk, org_export.pk, failed.pk}
    assert not FeedEvent.objects.filter(subject_id__in=subjects).exists()
    for auth in (
        bearer(org["alice"].user, org["organisation"]),
        bearer(org["viewer"].user, org["organisation"]),
        bearer(org["owner"].user, org["organisation"]),
        api_key_header(key),
    ):
        response = api_client.get("/api/v1/events", **auth)
        assert response.status_code == 200
        assert not {e["subject_id"] for e in response.json()["results"]} & {
            str(pk) for pk in subjects
        }
    assert not WebhookDelivery.objects.filter(event_type__startswith="report.").exists()
    failed.refresh_from_db()
    assert (failed.status, failed.error_code) == (ReportStatus.FAILED, "export_not_allowed")
    assert ready.status == org_export.status == ReportStatus.READY


def test_other_reports_are_still_on_the_feed_and_sent_to_webhooks(org):
    # Only exports are left out: a usage report still announces itself.
    WebhookEndpoint.objects.create(
        organisation=org["organisation"],
        created_by=org["owner"].user,
        url="https://hooks.example.com/reports",
        secret=WEBHOOK_SECRET,
        event_types=["report.ready"],
    )
    report = services.report_request(
        organisation=org["organisation"], user=org["owner"].user, kind="usage", format="csv"
    )
    services.report_generate(report_id=str(report.pk))

    assert FeedEvent.objects.filter(type="report.ready", subject_id=report.pk).exists()
    assert WebhookDelivery.objects.filter(event_type="report.ready").exists()


def test_an_export_whose_requester_was_demoted_fails(org):
    admin = member(Role.ADMIN, org["organisation"], email="admin@example.com")
    report = services.export_request(
        organisation=admin.organisation, user=admin.user, role=admin.role, scope="organisation"
    )
    admin.role = Role.MEMBER
    admin.save(update_fields=["role"])

    with pytest.raises(exports.ExportNotAllowed):
        services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert (report.status, report.error_code) == (ReportStatus.FAILED, "export_not_allowed")
    assert report.file_key == ""


# ---- Limits -------------------------------------------------------------------------------------
def test_one_export_in_progress_per_requester_and_one_organisation_export(org, api_client):
    organisation = org["organisation"]
    admin = member(Role.ADMIN, organisation, email="admin@example.com")

    def ask(membership, scope):
        return api_client.post(
            "/api/v1/reports/exports/",
            {"scope": scope},
            format="json",
            **bearer(membership.user, membership.organisation),
        )

    alices = ask(org["alice"], "member")
    alices_second = ask(org["alice"], "member")
    viewers = ask(org["viewer"], "member")  # another requester: not held off by alice's
    # Members' exports (a viewer's included) never hold off the organisation's export...
    owners = ask(org["owner"], "organisation")
    # ...of which there is one at a time, whoever asks.
    admins = ask(admin, "organisation")
    owners_own = ask(org["owner"], "member")
    elsewhere = ask(org["other"], "organisation")
    services.report_generate(report_id=alices.json()["id"])
    alices_after = ask(org["alice"], "member")

    assert [r.status_code for r in (alices, viewers, owners, owners_own, elsewhere)] == [202] * 5
    for refused in (alices_second, admins):
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "export_in_progress"
    assert alices_after.status_code == 202


def export_row(organisation, user, scope: str, **fields) -> Report:
    """An export's row as the service writes it (no file), e.g. a failed one to retry."""
    return Report.objects.create(
        organisation=organisation,
        created_by=user,
        kind=ReportKind.EXPORT,
        format="zip",
        export_scope=scope,
        **fields,
    )


def test_the_database_holds_one_pending_export_per_requester_and_per_organisation(org):
    from django.db import IntegrityError, transaction

    def create(user, scope):
        return export_row(org["organisation"], user, scope)

    create(org["alice"].user, "member")
    create(org["viewer"].user, "member")
    create(org["owner"].user, "organisation")
    for user, scope in ((org["alice"].user, "member"), (org["viewer"].user, "organisation")):
        with pytest.raises(IntegrityError), transaction.atomic():
            create(user, scope)


def test_a_retried_export_waits_for_the_one_in_progress(org):
    failed = export_row(
        org["organisation"], org["owner"].user, "member", status=ReportStatus.FAILED
    )
    services.export_request(
        organisation=org["organisation"], user=org["owner"].user, role="owner", scope="member"
    )

    with pytest.raises(services.ConflictError) as raised:
        services.report_retry(report=failed)

    assert raised.value.code == "export_in_progress"
    failed.refresh_from_db()
    assert failed.status == ReportStatus.FAILED


def test_a_retried_export_is_not_held_off_by_another_members_export(org):
    failed = export_row(
        org["organisation"], org["owner"].user, "organisation", status=ReportStatus.FAILED
    )
    services.export_request(
        organisation=org["organisation"], user=org["viewer"].user, role="viewer", scope="member"
    )

    retried = services.report_retry(report=failed)

    assert retried.status == ReportStatus.QUEUED


def test_asking_for_exports_is_rate_limited(org, api_client, settings):
    settings.PLAN_RATE_LIMITS = {
        plan: {**rates, "exports": "1/h"} for plan, rates in settings.PLAN_RATE_LIMITS.items()
    }
    auth = bearer(org["alice"].user, org["organisation"])
    first = api_client.post("/api/v1/reports/exports/", {"scope": "member"}, format="json", **auth)
    Report.objects.filter(pk=first.json()["id"]).delete()

    second = api_client.post("/api/v1/reports/exports/", {"scope": "member"}, format="json", **auth)
    listing = api_client.get("/api/v1/reports/", **auth)

    assert first.status_code == 202
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "throttled"
    assert listing.status_code == 200  # reading is not counted against the export rate


def test_the_export_task_runs_under_the_export_time_limits(settings):
    from workers.reports import generate_export, generate_report

    settings.EXPORT_TIME_LIMIT_SECONDS = 7200
    settings.CELERY_MAX_TASK_TIME_LIMIT = 6 * 3600

    assert (generate_export.soft_time_limit, generate_export.time_limit) == (7200, 7260)
    settings.CELERY_MAX_TASK_TIME_LIMIT = 3600
    assert (generate_export.soft_time_limit, generate_export.time_limit) == (3540, 3600)
    assert generate_report.time_limit != generate_export.time_limit


def test_exports_are_published_to_their_own_task(org):
    report = services.export_request(
        organisation=org["organisation"], user=org["owner"].user, role="owner", scope="member"
    )

    with (
        mock.patch("workers.reports.generate_export.apply_async") as export_task,
        mock.patch("workers.reports.generate_report.apply_async") as report_task,
    ):
        assert services.report_dispatch(report_id=report.pk) is True

    export_task.assert_called_once_with(args=[str(report.pk)])
    report_task.assert_not_called()


# ---- Retention ----------------------------------------------------------------------------------
def test_retention_deletes_expired_exports_with_their_files(
    org, media_root, django_capture_on_commit_callbacks
):
    from workers.maintenance import retention_cleanup

    expired = build(org["owner"], scope="member")
    Report.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    fresh = build(org["alice"], scope="member")
    old_failure = export_row(
        org["organisation"], org["viewer"].user, "member", status=ReportStatus.FAILED
    )
    Report.objects.filter(pk=old_failure.pk).update(updated_at=timezone.now() - timedelta(days=8))
    assert default_storage.exists(expired.file_key)

    with django_capture_on_commit_callbacks(execute=True):
        result = retention_cleanup.run()

    assert result["exports_deleted"] == 2
    assert set(Report.objects.values_list("pk", flat=True)) == {fresh.pk}
    assert not default_storage.exists(expired.file_key)
    assert default_storage.exists(fresh.file_key)


def test_an_expired_export_is_gone_for_download_before_the_sweep(org, api_client):
    report = build(org["owner"], scope="member")
    Report.objects.filter(pk=report.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = api_client.get(
        f"/api/v1/reports/{report.pk}/download", **bearer(org["owner"].user, org["organisation"])
    )

    assert response.status_code == 410
    assert response.json()["error"]["code"] == "export_expired"
    assert not AuditEvent.objects.filter(action="export.downloaded").exists()


def test_asking_for_another_organisations_export_is_404(org, api_client):
    response = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": "organisation"},
        format="json",
        HTTP_X_ORGANISATION=str(org["other"].organisation.pk),
        **bearer(org["owner"].user),
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organisation_not_found"
    assert not Report.objects.filter(kind=ReportKind.EXPORT).exists()


# ---- Dead letters -------------------------------------------------------------------------------
def fail_for_good(report: Report, *, attempts: int = 2) -> None:
    Report.objects.filter(pk=report.pk).update(
        status=ReportStatus.FAILED, attempts=attempts, error_code="too_many_attempts"
    )


def test_requeuing_an_exports_dead_letter_retries_the_export(
    org, django_capture_on_commit_callbacks
):
    from apps.core import services as core_services
    from apps.core.models import DeadLetter

    report = services.export_request(
        organisation=org["organisation"], user=org["alice"].user, role="member", scope="member"
    )
    fail_for_good(report)
    dead = DeadLetter.objects.create(
        task_name="workers.reports.generate_export",
        task_id=f"report-{report.pk}",
        queue="reports",
        args=[str(report.pk)],
    )

    with (
        mock.patch("workers.reports.generate_export.apply_async") as export_task,
        mock.patch("lexiscore.celery.app.send_task") as bare_message,
        django_capture_on_commit_callbacks(execute=True),
    ):
        core_services.dead_letter_requeue(dead_letter=dead)

    export_task.assert_called_once_with(args=[str(report.pk)])
    bare_message.assert_not_called()  # a bare message would find the export failed: skipped
    dead.refresh_from_db()
    report.refresh_from_db()
    assert dead.status == DeadLetter.Status.REQUEUED
    assert (report.status, report.attempts, report.error_code) == (ReportStatus.QUEUED, 0, "")
    services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    assert report.status == ReportStatus.READY


def test_the_dead_letters_command_requeues_an_export_through_its_report(
    org, django_capture_on_commit_callbacks
):
    from django.core.management import call_command

    from apps.core.models import DeadLetter

    report = services.export_request(
        organisation=org["organisation"], user=org["owner"].user, role="owner", scope="member"
    )
    fail_for_good(report)
    DeadLetter.objects.create(
        task_name="workers.reports.generate_export",
        task_id=f"report-{report.pk}",
        queue="reports",
        args=[str(report.pk)],
    )

    with (
        mock.patch("workers.reports.generate_export.apply_async") as export_task,
        mock.patch("lexiscore.celery.app.send_task") as bare_message,
        django_capture_on_commit_callbacks(execute=True),
    ):
        call_command(
            "dead_letters", "requeue", "--all", "--task", "workers.reports.generate_export"
        )

    export_task.assert_called_once_with(args=[str(report.pk)])
    bare_message.assert_not_called()
    report.refresh_from_db()
    assert report.status == ReportStatus.QUEUED


# ---- The report list's shared cache -------------------------------------------------------------
def test_an_export_created_while_the_list_is_read_never_enters_the_shared_cache(org, api_client):
    from apps.reports import selectors

    owner, viewer = org["owner"], org["viewer"]
    real = selectors.report_list
    raced: list[Report] = []

    def racing(**kwargs):
        result = real(**kwargs)
        if kwargs.get("kind") == ReportKind.EXPORT and not raced:
            # The owner's "any exports of mine?" check answers no; an organisation export is
            # created right after it, before the page is loaded (and cached).
            empty = not result.exists()
            raced.append(
                services.export_request(
                    organisation=owner.organisation,
                    user=owner.user,
                    role=owner.role,
                    scope="organisation",
                )
            )
            return Report.objects.none() if empty else result
        return result

    with mock.patch.object(selectors, "report_list", side_effect=racing):
        owners_page = api_client.get("/api/v1/reports/", **bearer(owner.user, owner.organisation))
    viewers_page = api_client.get("/api/v1/reports/", **bearer(viewer.user, viewer.organisation))
    owners_next = api_client.get("/api/v1/reports/", **bearer(owner.user, owner.organisation))

    assert raced
    assert [r["kind"] for r in owners_page.json()["results"]] == []
    assert viewers_page.json()["results"] == []  # not the owner's export, from the cache
    assert [r["id"] for r in owners_next.json()["results"]] == [str(raced[0].pk)]


def test_the_shared_list_page_is_loaded_without_a_reader(org, api_client):
    from apps.reports import selectors

    with mock.patch.object(selectors, "report_list", wraps=selectors.report_list) as listed:
        api_client.get("/api/v1/reports/", **bearer(org["viewer"].user, org["organisation"]))

    # The check (with the reader), then the cached page: whoever reads it, no exports.
    cached_load = listed.call_args_list[-1]
    assert cached_load.kwargs.get("user") is None and cached_load.kwargs.get("role") is None


# ---- Who may delete or retry an export ----------------------------------------------------------
def test_whoever_may_see_an_export_may_delete_or_retry_it(org, api_client):
    organisation = org["organisation"]
    viewer = bearer(org["viewer"].user, organisation)
    asked = api_client.post(
        "/api/v1/reports/exports/", {"scope": "member"}, format="json", **viewer
    )
    report_id = asked.json()["id"]
    Report.objects.filter(pk=report_id).update(status=ReportStatus.FAILED)

    retried = api_client.post(f"/api/v1/reports/{report_id}/retry/", **viewer)
    deleted = api_client.delete(f"/api/v1/reports/{report_id}/", **viewer)

    assert asked.status_code == 202
    assert retried.status_code == 202
    assert retried.json()["status"] == "queued"
    assert deleted.status_code == 204
    assert not Report.objects.filter(pk=report_id).exists()


def test_nobody_else_may_delete_or_retry_an_export(org, api_client):
    organisation = org["organisation"]

    def failed_export(user, scope):
        return export_row(organisation, user, scope, status=ReportStatus.FAILED)

    alices = failed_export(org["alice"].user, "member")
    owners = failed_export(org["owner"].user, "organisation")
    usage = Report.objects.create(
        organisation=organisation, created_by=org["owner"].user, kind="usage", format="csv"
    )
    viewer = bearer(org["viewer"].user, organisation)
    readers = {
        "viewer": viewer,
        "owner": bearer(org["owner"].user, organisation),
        "alice": bearer(org["alice"].user, organisation),
        "member key": api_key_header(ApiKeyFactory(organisation=organisation, role=Role.MEMBER)),
        "viewer key": api_key_header(ApiKeyFactory(organisation=organisation, role=Role.VIEWER)),
    }
    refused = {
        "viewer": [alices, owners],
        "owner": [alices],
        "alice": [owners],
        "member key": [alices, owners],
        "viewer key": [alices, owners],
    }

    for who, reports in refused.items():
        for report in reports:
            for response in (
                api_client.delete(f"/api/v1/reports/{report.pk}/", **readers[who]),
                api_client.post(f"/api/v1/reports/{report.pk}/retry/", **readers[who]),
            ):
                assert response.status_code == 404, (who, report.export_scope)
                assert response.json()["error"]["code"] == "report_not_found"
    # A viewer still may not delete or retry other reports.
    for response in (
        api_client.delete(f"/api/v1/reports/{usage.pk}/", **viewer),
        api_client.post(f"/api/v1/reports/{usage.pk}/retry/", **viewer),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "insufficient_role"
    assert Report.objects.filter(status=ReportStatus.FAILED).count() == 2


# ---- Attempts, time limits, deletion while built ------------------------------------------------
def test_the_export_task_has_export_max_attempts_tries(settings):
    from workers.reports import generate_export, generate_report

    assert settings.EXPORT_MAX_ATTEMPTS == 2
    assert generate_export.max_retries == 1
    assert generate_report.max_retries == settings.REPORT_MAX_ATTEMPTS - 1


def test_a_failing_export_fails_for_good_after_export_max_attempts(org, settings):
    settings.REPORT_MAX_ATTEMPTS = 3
    settings.EXPORT_MAX_ATTEMPTS = 2
    report = services.export_request(
        organisation=org["organisation"], user=org["alice"].user, role="member", scope="member"
    )

    with mock.patch.object(exports, "build_export", side_effect=RuntimeError("disk full")):
        for _ in range(2):
            with pytest.raises(RuntimeError):
                services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert (report.status, report.error_code, report.attempts) == (
        ReportStatus.FAILED,
        "generation_failed",
        2,
    )


def test_an_export_whose_tries_were_killed_is_not_built_a_third_time(org, settings):
    settings.REPORT_MAX_ATTEMPTS = 3
    settings.EXPORT_MAX_ATTEMPTS = 2
    report = services.export_request(
        organisation=org["organisation"], user=org["alice"].user, role="member", scope="member"
    )
    # Two tries, each killed (OOM) soon after its claim: nothing was recorded.
    Report.objects.filter(pk=report.pk).update(status=ReportStatus.RUNNING, attempts=2)

    with mock.patch.object(exports, "build_export") as build_it:
        assert services.report_generate(report_id=str(report.pk)) is None

    build_it.assert_not_called()
    report.refresh_from_db()
    assert (report.status, report.error_code) == (ReportStatus.FAILED, "too_many_attempts")


def test_an_export_killed_at_its_hard_time_limit_fails_with_time_limit(org, settings):
    settings.CELERY_MAX_TASK_TIME_LIMIT = 6 * 3600
    settings.EXPORT_TIME_LIMIT_SECONDS = 600  # hard: 660
    report = services.export_request(
        organisation=org["organisation"], user=org["owner"].user, role="owner", scope="organisation"
    )
    # Its first try was claimed 11 minutes ago and never recorded anything: killed at the hard
    # limit (redelivered, or republished by the sweeper).
    Report.objects.filter(pk=report.pk).update(
        status=ReportStatus.RUNNING,
        attempts=1,
        updated_at=timezone.now() - timedelta(seconds=661),
    )

    with mock.patch.object(exports, "build_export") as build_it:
        assert services.report_generate(report_id=str(report.pk)) is None

    build_it.assert_not_called()
    report.refresh_from_db()
    assert (report.status, report.error_code, report.file_key) == (
        ReportStatus.FAILED,
        "time_limit",
        "",
    )
    assert "EXPORT_TIME_LIMIT_SECONDS" in report.error_message
    # The organisation's export slot is free again.
    services.export_request(
        organisation=org["organisation"], user=org["owner"].user, role="owner", scope="organisation"
    )


def test_an_export_killed_early_is_built_again(org, settings):
    settings.CELERY_MAX_TASK_TIME_LIMIT = 6 * 3600
    settings.EXPORT_TIME_LIMIT_SECONDS = 600
    report = services.export_request(
        organisation=org["organisation"], user=org["alice"].user, role="member", scope="member"
    )
    # Killed (OOM) a minute into its first try: well within its time limit.
    Report.objects.filter(pk=report.pk).update(
        status=ReportStatus.RUNNING, attempts=1, updated_at=timezone.now() - timedelta(seconds=60)
    )

    services.report_generate(report_id=str(report.pk))

    report.refresh_from_db()
    assert (report.status, report.attempts) == (ReportStatus.READY, 2)


def test_an_export_deleted_while_it_is_built_stores_no_file(org, media_root):
    report = services.export_request(
        organisation=org["organisation"], user=org["owner"].user, role="owner", scope="organisation"
    )
    real_build = exports.build_export

    def build_then_delete(report_, fileobj):
        manifest = real_build(report_, fileobj)
        services.report_delete(report=Report.objects.get(pk=report_.pk))  # by its requester
        return manifest

    with (
        mock.patch.object(exports, "build_export", side_effect=build_then_delete),
        mock.patch.object(services, "guard_file", wraps=services.guard_file) as guarded,
    ):
        assert services.report_generate(report_id=str(report.pk)) is None

    guarded.assert_not_called()  # nothing was stored, so nothing guarded
    assert not Report.objects.filter(pk=report.pk).exists()
    assert not default_storage.exists(f"reports/{report.organisation_id}/{report.pk}")


# ---- Contents added by the review ---------------------------------------------------------------
def test_jobs_jsonl_leaves_out_the_legacy_callback_url(org):
    job = org["owner_job"]
    job.callback_url = "https://ci.example.com/hook?token=sk_live_SECRET123"
    job.save(update_fields=["callback_url"])

    _archive, files = unzip(build(org["owner"], scope="organisation"))

    assert all("callback_url" not in row for row in jsonl(files["jobs.jsonl"]))
    assert b"sk_live_SECRET123" not in b"".join(files.values())
    assert b"ci.example.com" not in b"".join(files.values())


def test_a_transcripts_history_and_machine_output_are_exported(org, api_client):
    from apps.audio_jobs import editing

    job = org["alice_job"]
    original_text = job.transcript.text
    editing.transcript_edit(
        job=job,
        revision=0,
        segments=[{"id": 0, "text": "Hello there, this is a recorded meeting about budgets."}],
        note="greeting",
        user=org["owner"].user,
    )
    editing.transcript_edit(
        job=job,
        revision=1,
        segments=[{"id": 0, "text": "Hello there, this is a meeting about budgets."}],
        user=org["alice"].user,
    )
    editing.transcript_revert(
        job=job, revision=1, current_revision=2, note="undo", user=org["alice"].user
    )
    machine_output = api_client.get(
        f"/api/v1/jobs/{job.pk}/transcript?format=json&revision=0&download=true",
        **bearer(org["alice"].user, org["organisation"]),
    )
    assert machine_output.status_code == 200

    _archive, files = unzip(build(org["alice"], scope="member"))

    manifest = check_manifest(files)
    assert manifest["counts"]["transcript_revisions"] == 3
    history = json.loads(files[f"transcripts/{job.pk}.revisions.json"])
    assert history["current_revision"] == 3 and history["edited_at"]
    rows = history["revisions"]
    assert [(r["revision"], r["kind"], r["reverted_to"]) for r in rows] == [
        (1, "edit", None),
        (2, "edit", None),
        (3, "revert", 1),
    ]
    assert [r["segment_ids"] for r in rows] == [[0], [0], [0]]
    assert [r["note"] for r in rows] == ["greeting", "", "undo"]
    assert all(r["created_at"] for r in rows)
    # The owner's edit of alice's transcript: alice's export does not hold the owner's email.
    assert [r["editor"] for r in rows] == [
        exports.OTHER_MEMBER,
        "alice@example.com",
        "alice@example.com",
    ]
    assert b"owner@example.com" not in b"".join(files.values())
    assert "before" not in rows[0]
    # The machine output, as GET /jobs/<id>/transcript?revision=0 serves it.
    original = files[f"transcripts/{job.pk}.original.json"]
    assert original == machine_output.content
    assert json.loads(original)["text"] == original_text
    current = json.loads(files[f"transcripts/{job.pk}.json"])
    assert current["text"].strip() == "Hello there, this is a recorded meeting about budgets."

    # The organisation's export names every editor; an unedited transcript has no original.
    _archive, org_files = unzip(build(org["owner"], scope="organisation"))
    org_rows = json.loads(org_files[f"transcripts/{job.pk}.revisions.json"])["revisions"]
    assert org_rows[0]["editor"] == "owner@example.com"
    owner_job = org["owner_job"].pk
    assert json.loads(org_files[f"transcripts/{owner_job}.revisions.json"]) == {
        "current_revision": 0,
        "edited_at": None,
        "revisions": [],
    }
    assert f"transcripts/{owner_job}.original.json" not in org_files
