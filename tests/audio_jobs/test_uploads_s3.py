"""Presigned direct uploads against an S3-compatible server on loopback (moto's standalone server).

moto does NOT enforce presigned POST policies: it accepts a body over `content-length-range`, a
different key or a bad signature with 204 (see /work/shared/FACTS.md, "Services that stand in
here"). So these tests cannot show that storage refuses a bad upload; what they prove is the
platform's own guard: the ticket carries the right policy, and `POST /api/v1/jobs` checks the
object under the ticket's exact key (HEAD: present, size within the limit, ticket unused, same
organisation) before a job exists. Real S3 and MinIO enforce the policy as well.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from datetime import datetime, timedelta
from unittest import mock

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import Role
from apps.audio_jobs import processing, services
from apps.audio_jobs.models import JobStatus, TranscriptionJob, Upload
from apps.core.models import PendingDeletion
from apps.core.storage import pending_deletions_sweep
from tests.factories import ApiKeyFactory, api_key_header, bearer, member

BUCKET = "lexiscore-test-audio"
UPLOADS = "/api/v1/uploads"
JOBS = "/api/v1/jobs"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    # Port 0: the OS picks a free port, read back from the bound server.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # moto accepts any credentials
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def s3(settings, s3_endpoint):
    """S3 as the default storage for this test; returns a boto3 client on the same bucket."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": s3_endpoint,
                "region_name": "us-east-1",
                "access_key": "testing",
                "secret_key": "testing",
                "default_acl": None,
                "file_overwrite": False,
                "addressing_style": "path",
                "signature_version": "s3v4",
            },
        },
    }
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def exists(client, key: str) -> bool:
    try:
        client.head_object(Bucket=BUCKET, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in {"404", "NoSuchKey"}:
            return False
        raise
    return True


def ticket(api_client, headers, size_bytes: int = 30_000, filename: str = "talk.mp3"):
    response = api_client.post(
        UPLOADS, {"filename": filename, "size_bytes": size_bytes}, format="json", **headers
    )
    assert response.status_code == 201, response.content
    return response.json()


def send(body: dict, content: bytes, key: str | None = None) -> requests.Response:
    """POST a file to the presigned URL as a browser form would (optionally to another key)."""
    fields = dict(body["fields"])
    if key is not None:
        fields["key"] = key
    return requests.post(
        body["url"], data=fields, files={"file": ("talk.mp3", content)}, timeout=10
    )


def create_job(api_client, headers, upload_id, **fields):
    return api_client.post(JOBS, {"upload_id": upload_id, **fields}, format="json", **headers)


def error_code(response) -> str:
    body = response.json()
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    return body["error"]["code"]


@pytest.fixture(scope="module")
def clip_bytes(speech) -> bytes:
    return speech.say("Hello there, this is a short test.", fmt="mp3").read_bytes()


# ---- the ticket --------------------------------------------------------------------------------
def test_the_ticket_is_a_presigned_post_for_one_exact_key_with_a_size_range(
    api_client, auth, org, s3, settings
):
    settings.AUDIO_MAX_UPLOAD_BYTES = 50_000_000
    before = timezone.now()

    body = ticket(api_client, auth, size_bytes=1_234_567, filename="../../Board talk.mp3")

    upload = Upload.objects.get(pk=body["id"])
    key = f"org/{org.pk}/uploads/{upload.pk}"
    assert upload.key == key
    assert upload.filename == "Board talk.mp3"
    assert upload.status == Upload.Status.PENDING
    assert body["max_size"] == 50_000_000
    assert body["fields"]["key"] == key
    assert body["url"].endswith(f"/{BUCKET}")
    policy = json.loads(base64.b64decode(body["fields"]["policy"]))
    assert ["content-length-range", 1, 50_000_000] in policy["conditions"]
    assert {"key": key} in policy["conditions"]
    assert {"bucket": BUCKET} in policy["conditions"]
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert timedelta(minutes=14) < expiration - before <= timedelta(minutes=15, seconds=5)
    assert abs(datetime.fromisoformat(body["expires_at"]) - expiration) < timedelta(seconds=5)


def test_a_ticket_for_a_file_over_the_limit_is_refused(api_client, auth, s3, settings):
    settings.AUDIO_MAX_UPLOAD_BYTES = 10_000

    response = api_client.post(UPLOADS, {"size_bytes": 10_001}, format="json", **auth)

    assert response.status_code == 413
    assert error_code(response) == "file_too_large"
    assert Upload.objects.count() == 0


def test_a_ticket_with_unknown_fields_is_refused(api_client, auth, s3):
    response = api_client.post(
        UPLOADS, {"size_bytes": 10, "key": "org/x/uploads/mine"}, format="json", **auth
    )

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"key": ["Unknown field."]}


def test_a_viewer_cannot_ask_for_a_ticket(api_client, org, s3):
    viewer = bearer(member(Role.VIEWER, organisation=org).user)

    response = api_client.post(UPLOADS, {"size_bytes": 10}, format="json", **viewer)

    assert response.status_code == 403
    assert error_code(response) == "insufficient_role"


def test_presigned_uploads_need_s3_storage(api_client, auth):
    response = api_client.post(UPLOADS, {"size_bytes": 1000}, format="json", **auth)

    assert response.status_code == 409
    assert error_code(response) == "presigned_upload_unavailable"
    assert Upload.objects.count() == 0


# ---- creating the job --------------------------------------------------------------------------
def test_an_uploaded_object_becomes_a_queued_job_checked_later_by_the_worker(
    api_client, auth, org, s3, clip_bytes
):
    body = ticket(api_client, auth)

    stored = send(body, clip_bytes)
    response = create_job(
        api_client, {**auth, "HTTP_IDEMPOTENCY_KEY": "s3-1"}, body["id"], language="en"
    )

    assert stored.status_code == 204
    assert response.status_code == 201, response.json()
    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    assert job.status == JobStatus.QUEUED
    assert job.audio_validated is False
    assert (job.container, job.codec, job.duration_seconds) == ("", "", None)
    assert job.audio_key == f"org/{org.pk}/audio/{job.pk}.bin"
    assert job.size_bytes == len(clip_bytes)
    assert job.original_filename == "talk.mp3"
    assert Upload.objects.get(pk=body["id"]).status == Upload.Status.CONSUMED
    replay = create_job(api_client, {**auth, "HTTP_IDEMPOTENCY_KEY": "s3-1"}, body["id"])
    assert (replay.status_code, replay.json()["id"]) == (200, str(job.pk))


def test_tickets_name_the_public_endpoint_when_the_store_is_reached_at_another_address(
    api_client, auth, s3, s3_endpoint, settings, clip_bytes
):
    """Compose's MinIO is http://minio:9000 to the platform: AWS_S3_PUBLIC_ENDPOINT_URL names
    where browsers reach it. The form goes there; its signature (SigV4 over the policy, not the
    host) is valid for the store whichever address forwards it."""
    import hashlib
    import hmac

    settings.AWS_S3_PUBLIC_ENDPOINT_URL = "https://uploads.example.test"

    body = ticket(api_client, auth)

    assert body["url"] == f"https://uploads.example.test/{BUCKET}"
    fields = body["fields"]
    access_key, day, region, service, _ = fields["x-amz-credential"].split("/")
    signing = b"AWS4testing"
    for part in (day, region, service, "aws4_request"):
        signing = hmac.new(signing, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(signing, fields["policy"].encode(), hashlib.sha256).hexdigest()
    assert (access_key, fields["x-amz-signature"]) == ("testing", expected)
    # What the public address forwards to the store (here moto, straight).
    stored = send({**body, "url": f"{s3_endpoint}/{BUCKET}"}, clip_bytes)
    response = create_job(api_client, auth, body["id"], language="en")
    assert (stored.status_code, response.status_code) == (204, 201)


def test_an_api_key_can_upload_directly(api_client, org, s3, clip_bytes):
    headers = api_key_header(ApiKeyFactory(organisation=org, role=Role.MEMBER))
    body = ticket(api_client, headers)
    send(body, clip_bytes)

    response = create_job(api_client, headers, body["id"], language="en")

    assert response.status_code == 201, response.json()
    assert Upload.objects.get(pk=body["id"]).created_by is None


def test_a_ticket_with_nothing_uploaded_is_refused_and_stays_usable(api_client, auth, s3):
    body = ticket(api_client, auth)

    response = create_job(api_client, auth, body["id"])

    assert response.status_code == 400
    assert error_code(response) == "upload_missing"
    assert "POST the file to the presigned URL" in response.json()["error"]["message"]
    assert Upload.objects.get(pk=body["id"]).status == Upload.Status.PENDING
    assert TranscriptionJob.objects.count() == 0


def test_an_object_sent_to_another_key_does_not_count_for_the_ticket(
    api_client, auth, org, s3, clip_bytes
):
    # moto stores it (real S3 refuses the key); the platform only ever reads the ticket's key.
    body = ticket(api_client, auth)
    other_key = f"org/{org.pk}/uploads/{uuid.uuid4()}"

    send(body, clip_bytes, key=other_key)
    response = create_job(api_client, auth, body["id"])

    assert exists(s3, other_key)
    assert response.status_code == 400
    assert error_code(response) == "upload_missing"
    s3.delete_object(Bucket=BUCKET, Key=other_key)


def test_an_object_larger_than_the_ticket_allows_is_refused_and_deleted(
    api_client, auth, s3, settings, clip_bytes
):
    settings.AUDIO_MAX_UPLOAD_BYTES = 5_000
    body = ticket(api_client, auth, size_bytes=4_000)
    key = Upload.objects.get(pk=body["id"]).key

    stored = send(body, clip_bytes)  # ~22 kB: over the policy's range, which moto ignores
    response = create_job(api_client, auth, body["id"])

    assert stored.status_code == 204
    assert response.status_code == 413
    assert error_code(response) == "upload_size_invalid"
    assert response.json()["error"]["message"] == (
        f"The uploaded object is {len(clip_bytes)} bytes; it must be between 1 and 5000 bytes."
    )
    assert not exists(s3, key)
    assert TranscriptionJob.objects.count() == 0


def test_an_empty_object_is_refused_and_deleted(api_client, auth, s3):
    body = ticket(api_client, auth)
    key = Upload.objects.get(pk=body["id"]).key

    send(body, b"")
    response = create_job(api_client, auth, body["id"])

    assert response.status_code == 400
    assert error_code(response) == "upload_size_invalid"
    assert not exists(s3, key)


def test_a_consumed_upload_cannot_make_a_second_job(api_client, auth, s3, clip_bytes):
    body = ticket(api_client, auth)
    send(body, clip_bytes)
    first = create_job(api_client, auth, body["id"])

    second = create_job(api_client, auth, body["id"])

    assert first.status_code == 201
    assert second.status_code == 409
    assert error_code(second) == "upload_used"
    assert TranscriptionJob.objects.count() == 1


@pytest.mark.parametrize("same_upload", [True, False], ids=["same upload", "two uploads"])
def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    transactional_db, owner, s3, clip_bytes, same_upload
):
    # Both requests pass the "no job with this key yet" check before either creates one. With
    # one upload the second waits for the first's lock and then replays its job; with two, the
    # unique key decides and the loser's upload stays unused.
    headers = bearer(owner.user, owner.organisation)
    client = APIClient()
    tickets = [ticket(client, headers) for _ in range(1 if same_upload else 2)]
    for body in tickets:
        send(body, clip_bytes)
    upload_ids = [tickets[0]["id"], tickets[-1]["id"]]
    barrier = threading.Barrier(2, timeout=20)
    replay, first_call = services._replay, threading.local()

    def replay_together(organisation, key):
        if not getattr(first_call, "done", False):
            first_call.done = True
            barrier.wait()
        return replay(organisation, key)

    responses = []

    def request(upload_id):
        try:
            headers_once = {**headers, "HTTP_IDEMPOTENCY_KEY": "once"}
            responses.append(create_job(APIClient(), headers_once, upload_id))
        finally:
            connection.close()

    with (
        mock.patch.object(services, "_replay", replay_together),
        mock.patch("workers.transcription.transcribe_job.apply_async") as publish,
    ):
        threads = [threading.Thread(target=request, args=(u,)) for u in upload_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    job = TranscriptionJob.objects.get()
    assert sorted(r.status_code for r in responses) == [200, 201]
    assert {r.json()["id"] for r in responses} == {str(job.pk)}
    assert sorted(Upload.objects.values_list("status", flat=True)) == (
        ["consumed"] if same_upload else ["consumed", "pending"]
    )
    publish.assert_called_once()


@pytest.mark.parametrize("role", [Role.OWNER, Role.MEMBER])
def test_another_organisations_upload_is_not_found(api_client, db, s3, clip_bytes, role):
    owner_b = member(Role.OWNER)
    body = ticket(api_client, bearer(owner_b.user))
    send(body, clip_bytes)
    headers_a = bearer(member(role).user)

    foreign = create_job(api_client, headers_a, body["id"])
    unknown = create_job(api_client, headers_a, str(uuid.uuid4()))

    assert foreign.status_code == unknown.status_code == 404
    assert error_code(foreign) == error_code(unknown) == "upload_not_found"
    assert body["id"] not in foreign.content.decode()
    assert Upload.objects.get(pk=body["id"]).status == Upload.Status.PENDING
    assert exists(s3, Upload.objects.get(pk=body["id"]).key)


def test_an_uploaded_object_that_is_not_audio_fails_at_the_workers_validation(api_client, auth, s3):
    body = ticket(api_client, auth)
    send(body, b"<!DOCTYPE html><html><body>not audio</body></html>")
    job_id = create_job(api_client, auth, body["id"], language="en").json()["id"]

    outcome = processing.job_process(job_id=job_id)

    job = TranscriptionJob.objects.get(pk=job_id)
    assert outcome == "failed"
    assert (job.status, job.error_code) == (JobStatus.FAILED, "unsupported_media_type")
    assert job.audio_validated is False


# ---- expiry and abandoned tickets --------------------------------------------------------------
def test_an_expired_ticket_is_refused_with_410_and_stays_for_the_sweep(
    api_client, auth, s3, settings, clip_bytes
):
    settings.PRESIGNED_UPLOAD_GRACE_SECONDS = 3600
    body = ticket(api_client, auth)
    send(body, clip_bytes)
    Upload.objects.filter(pk=body["id"]).update(
        expires_at=timezone.now() - timedelta(hours=1, seconds=1)
    )

    response = create_job(api_client, auth, body["id"])

    assert response.status_code == 410
    assert error_code(response) == "upload_expired"
    assert "ask for a new one (POST /api/v1/uploads)" in response.json()["error"]["message"]
    assert TranscriptionJob.objects.count() == 0
    assert exists(s3, Upload.objects.get(pk=body["id"]).key)


def test_a_late_job_within_the_grace_still_uses_its_ticket(
    api_client, auth, s3, settings, clip_bytes
):
    # The upload started before the ticket expired and finished after it.
    settings.PRESIGNED_UPLOAD_GRACE_SECONDS = 3600
    body = ticket(api_client, auth)
    send(body, clip_bytes)
    Upload.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(minutes=5))

    response = create_job(api_client, auth, body["id"])

    assert response.status_code == 201, response.json()


def test_an_abandoned_ticket_and_its_object_are_deleted_by_the_sweep(
    api_client, auth, s3, settings, clip_bytes, django_capture_on_commit_callbacks
):
    settings.PRESIGNED_UPLOAD_GRACE_SECONDS = 3600
    abandoned, used = ticket(api_client, auth), ticket(api_client, auth)
    for body in (abandoned, used):
        send(body, clip_bytes)
    create_job(api_client, auth, used["id"])
    Upload.objects.update(expires_at=timezone.now() - timedelta(days=2))
    keys = {u.pk: u.key for u in Upload.objects.all()}

    with django_capture_on_commit_callbacks(execute=True):
        deleted = services.uploads_delete_abandoned()

    assert deleted == 1
    assert list(Upload.objects.values_list("status", flat=True)) == [Upload.Status.CONSUMED]
    assert not exists(s3, keys[uuid.UUID(abandoned["id"])])
    assert exists(s3, TranscriptionJob.objects.get().audio_key)


# ---- the form stays valid after its ticket became a job ----------------------------------------
def read(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_a_job_reads_a_copy_under_its_own_key_and_the_tickets_object_is_deleted(
    api_client, auth, org, s3, clip_bytes, django_capture_on_commit_callbacks
):
    body = ticket(api_client, auth)
    send(body, clip_bytes)
    upload = Upload.objects.get(pk=body["id"])

    with django_capture_on_commit_callbacks(execute=True):
        response = create_job(api_client, auth, body["id"], language="en")

    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    assert job.audio_key == f"org/{org.pk}/audio/{job.pk}.bin"
    assert read(s3, job.audio_key) == clip_bytes
    assert not exists(s3, upload.key)
    # Deleted again once the form can no longer be used.
    assert list(PendingDeletion.objects.values_list("key", "next_attempt_at")) == [
        (upload.key, services.upload_usable_until(upload))
    ]


def test_the_form_sent_again_after_the_job_was_created_cannot_change_its_audio(
    api_client, auth, s3, clip_bytes, django_capture_on_commit_callbacks
):
    body = ticket(api_client, auth)
    send(body, clip_bytes)
    with django_capture_on_commit_callbacks(execute=True):
        job_id = create_job(api_client, auth, body["id"], language="en").json()["id"]

    # An HLS playlist (ffmpeg would fetch its segments) sent with the same, still valid form.
    hostile = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://169.254.169.254/x.ts\n"
    assert send(body, hostile).status_code == 204

    assert read(s3, TranscriptionJob.objects.get(pk=job_id).audio_key) == clip_bytes


def test_the_form_sent_again_after_the_job_was_deleted_leaves_no_object(
    api_client, auth, s3, clip_bytes, django_capture_on_commit_callbacks
):
    body = ticket(api_client, auth)
    send(body, clip_bytes)
    key = Upload.objects.get(pk=body["id"]).key
    with django_capture_on_commit_callbacks(execute=True):
        job_id = create_job(api_client, auth, body["id"], language="en").json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"{JOBS}/{job_id}", **auth).status_code == 204
    assert send(body, clip_bytes).status_code == 204

    swept = pending_deletions_sweep(now=timezone.now() + timedelta(hours=2))

    assert swept == {"deleted": 1, "failed": 0}
    assert not exists(s3, key)
    assert PendingDeletion.objects.count() == 0


def test_an_object_replaced_between_its_check_and_its_copy_is_refused(
    api_client, auth, s3, clip_bytes, monkeypatch
):
    """The copy is pinned to the ETag of the version checked: one sent again meanwhile (the form
    is still valid) fails the copy rather than becoming, even partly, the job's audio."""
    from apps.audio_jobs import storage

    body = ticket(api_client, auth)
    send(body, clip_bytes)
    checked = storage.object_etag(Upload.objects.get(pk=body["id"]).key)
    send(body, clip_bytes + b"\\0")  # replaced after the check
    monkeypatch.setattr(storage, "object_etag", lambda key: checked)

    response = create_job(api_client, auth, body["id"], language="en")

    assert response.status_code == 409, response.json()
    assert response.json()["error"]["code"] == "upload_changed"
    assert not TranscriptionJob.objects.exists()
    assert Upload.objects.get(pk=body["id"]).status == Upload.Status.PENDING


def test_a_multipart_copy_whose_part_no_longer_matches_is_source_changed(s3, monkeypatch):
    """Above 8 MiB s3transfer copies in parts and reports a part's failed precondition as its
    own S3CopyFailedError, not a ClientError."""
    from django.core.files.storage import default_storage
    from s3transfer.exceptions import S3CopyFailedError

    from apps.audio_jobs import storage

    client = default_storage.connection.meta.client

    def part_changed(*args, **kwargs):
        raise S3CopyFailedError('Contents of stored object "a" did not match expected ETag.')

    monkeypatch.setattr(client, "copy", part_changed)

    with pytest.raises(storage.SourceChanged):
        storage.copy_file("uploads/a", "org/x/audio/y.bin", if_match='"abc"')


def test_retranscribing_a_job_whose_object_is_gone_is_a_conflict_not_a_500(
    api_client, auth, org, s3
):
    """The object removed out of band (a lifecycle rule, an operator) between the check and the
    copy: S3 answers the copy 404, which is `audio_missing` as on a file system."""
    from apps.audio_jobs.models import TranscriptionJob
    from tests.audio_jobs.factories import CompletedJobFactory

    source = CompletedJobFactory(organisation=org)  # its audio_key names no stored object

    response = api_client.post(f"/api/v1/jobs/{source.pk}/retranscribe", {}, format="json", **auth)

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "audio_missing"
    assert TranscriptionJob.objects.filter(retranscribed_from=source).count() == 0
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"org/{org.pk}/")  # the bucket is shared
    assert listed.get("KeyCount", 0) == 0
