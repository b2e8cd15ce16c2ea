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
    owner = org["owner"]

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
        "usage_rows": 2,
        "api_keys": 2,
        "webhook_endpoints": 1,
        "webhook_deliveries": 1,
        "audit_events": 3,  # the two jobs' and export.requested
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
    endpoint = json.loads(files["webhook_endpoints.json"])[0]
    assert endpoint["url"] == "https://hooks.example.com/lexis"
    assert "secret" not in endpoint and "previous_secret" not in endpoint
    assert jsonl(files["webhook_deliveries.jsonl"])[0]["event_id"] == "evt_1"
    actions = [e["action"] for e in jsonl(files["audit_events.jsonl"])]
    assert actions == ["job.created", "job.created", "export.requested"]
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
        "usage.csv",
        "api_keys.json",
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


def test_an_export_is_announced_on_the_feed_but_never_to_webhooks(org):
    report = build(org["owner"], scope="organisation")

    event = FeedEvent.objects.get(type="report.ready")
    assert event.subject_id == report.pk
    assert event.data["export_scope"] == "organisation"
    assert not WebhookDelivery.objects.filter(event_type__startswith="report.").exists()


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
def test_one_export_at_a_time_per_organisation(org, api_client):
    organisation = org["organisation"]
    first = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": "member"},
        format="json",
        **bearer(org["alice"].user, organisation),
    )

    second = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": "organisation"},
        format="json",
        **bearer(org["owner"].user, organisation),
    )
    elsewhere = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": "organisation"},
        format="json",
        **bearer(org["other"].user, org["other"].organisation),
    )
    services.report_generate(report_id=first.json()["id"])
    after = api_client.post(
        "/api/v1/reports/exports/",
        {"scope": "organisation"},
        format="json",
        **bearer(org["owner"].user, organisation),
    )

    assert first.status_code == 202
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "export_in_progress"
    assert elsewhere.status_code == 202
    assert after.status_code == 202


def test_a_retried_export_waits_for_the_one_in_progress(org):
    failed = Report.objects.create(
        organisation=org["organisation"],
        created_by=org["owner"].user,
        kind=ReportKind.EXPORT,
        format="zip",
        export_scope="member",
        status=ReportStatus.FAILED,
    )
    services.export_request(
        organisation=org["organisation"], user=org["alice"].user, role="member", scope="member"
    )

    with pytest.raises(services.ConflictError) as raised:
        services.report_retry(report=failed)

    assert raised.value.code == "export_in_progress"
    failed.refresh_from_db()
    assert failed.status == ReportStatus.FAILED


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
    old_failure = Report.objects.create(
        organisation=org["organisation"],
        created_by=org["viewer"].user,
        kind=ReportKind.EXPORT,
        format="zip",
        export_scope="member",
        status=ReportStatus.FAILED,
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
