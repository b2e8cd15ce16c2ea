"""The jobs API with real ffprobe/ffmpeg validation, PostgreSQL and Redis, and no Celery worker.

A test runs inside a transaction that is rolled back, so the on-commit dispatch of a new job never
runs unless a test captures the callbacks (and then the publish is mocked at
`transcribe_job.apply_async`). Each test has its own media root and upload temp folder, so
"nothing is left behind" is checked on exactly the files that test made.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import zipfile
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs import services
from apps.audio_jobs.models import AudioUsage, JobStatus, Transcript, TranscriptionJob
from tests.audio_jobs.conftest import media_files
from tests.audio_jobs.factories import (
    CompletedJobFactory,
    JobFactory,
    TranscriptFactory,
    UploadFactory,
)
from tests.factories import ApiKeyFactory, OrganisationFactory, api_key_header, bearer, member

JOBS = "/api/v1/jobs"
SPOKEN = "Hello there, this is a short test."
BOUNDARY = "lexiscore-test-boundary"


# ---- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    """This test's own media root and upload temp folder (to prove nothing is left behind)."""
    root = tmp_path / "media"
    root.mkdir()
    uploads_tmp = tmp_path / "upload-tmp"
    uploads_tmp.mkdir()
    settings.MEDIA_ROOT = str(root)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    settings.FILE_UPLOAD_TEMP_DIR = str(uploads_tmp)
    return root


@pytest.fixture
def upload_tmp(settings) -> Path:
    return Path(settings.FILE_UPLOAD_TEMP_DIR)


@pytest.fixture(scope="module")
def clip(speech) -> Path:
    """About 2.7 s of espeak speech as MP3."""
    return speech.say(SPOKEN, fmt="mp3")


def post_file(client, headers, path: Path, **fields):
    with path.open("rb") as handle:
        return client.post(JOBS, {"file": handle, **fields}, format="multipart", **headers)


def multipart(filename: str, content: bytes, **fields: str) -> bytes:
    """A multipart body written by hand, so the file name is sent exactly as given."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def post_raw(client, headers, body: bytes):
    return client.post(
        JOBS, data=body, content_type=f"multipart/form-data; boundary={BOUNDARY}", **headers
    )


def assert_error(response, status: int, code: str) -> dict:
    """The one error body of the API, with this status and code."""
    assert response.status_code == status, response.content
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == code, error
    assert error["message"]
    assert error["request_id"] == response["X-Request-ID"]
    return error


def as_role(role: str, organisation) -> dict[str, str]:
    return bearer(member(role, organisation=organisation).user)


# ---- create: the happy path --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "container", "codec", "extension"),
    [
        ("wav", "wav", "pcm_s16le", ".wav"),
        ("mp3", "mp3", "mp3", ".mp3"),
        ("flac", "flac", "flac", ".flac"),
        ("ogg", "ogg", "vorbis", ".ogg"),
        ("opus", "ogg", "opus", ".ogg"),
        ("m4a", "mp4", "aac", ".m4a"),
        ("webm", "matroska", "opus", ".webm"),
    ],
)
def test_a_multipart_upload_creates_a_queued_job_with_the_measured_audio(
    api_client, auth, org, owner, speech, media_root, upload_tmp, fmt, container, codec, extension
):
    audio = speech.say(SPOKEN, fmt=fmt)

    response = post_file(api_client, auth, audio, language="en", model="tiny.en", priority="high")

    assert response.status_code == 201, response.json()
    body = response.json()
    job = TranscriptionJob.objects.get(pk=body["id"])
    assert body["status"] == "queued"
    assert (body["container"], body["codec"]) == (container, codec)
    assert 2.6 <= body["duration_seconds"] <= 2.8
    assert body["size_bytes"] == audio.stat().st_size
    assert body["original_filename"] == audio.name
    assert (body["language"], body["model"], body["priority"]) == ("en", "tiny.en", "high")
    assert body["links"] == {
        "self": f"/api/v1/jobs/{job.pk}",
        "cancel": f"/api/v1/jobs/{job.pk}/cancel",
        "queue": f"/api/v1/jobs/{job.pk}/queue",
    }
    assert body["created_by"] == str(owner.user.public_id)
    assert job.organisation == org
    assert job.audio_validated is True
    assert job.queued_at is not None and job.dispatched_at is None
    assert job.audio_key == f"org/{org.pk}/audio/{job.pk}{extension}"
    assert media_files(media_root) == [job.audio_key]
    assert (media_root / job.audio_key).read_bytes() == audio.read_bytes()
    assert list(upload_tmp.iterdir()) == []


def test_the_job_is_published_once_after_commit_with_limits_scaled_by_duration(
    api_client, auth, clip, django_capture_on_commit_callbacks
):
    with (
        mock.patch("workers.transcription.transcribe_job.apply_async") as publish,
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        response = post_file(api_client, auth, clip, language="en", priority="low")

    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    # One publishing hook; the others refresh cached reads (apps.core.generations), note the
    # commit (the stored audio is the job's from then on) or wake the live feed's streams.
    others = ("GenerationalCache", "mark_committed", "wake_streams")
    assert len([c for c in callbacks if not any(o in c.__qualname__ for o in others)]) == 1
    publish.assert_called_once_with(
        args=[str(job.pk)],
        queue="transcription.cpu",
        priority=9,
        soft_time_limit=300 + 3,  # base + ceil(2.7 s x 1.0)
        time_limit=363,
        headers={"job_id": str(job.pk)},
    )
    assert job.dispatched_at is not None


def test_a_broker_failure_at_dispatch_leaves_the_job_queued_for_the_sweeper(
    api_client, auth, clip, django_capture_on_commit_callbacks
):
    with (
        mock.patch(
            "workers.transcription.transcribe_job.apply_async",
            side_effect=ConnectionError("broker down"),
        ),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = post_file(api_client, auth, clip, language="en")

    assert response.status_code == 201
    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    assert job.status == JobStatus.QUEUED
    assert job.dispatched_at is None


def test_a_truncated_mp3_is_measured_by_decoding_not_by_its_header(
    api_client, auth, clip, tmp_path
):
    truncated = tmp_path / "half.mp3"
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    response = post_file(api_client, auth, truncated, language="en")

    assert response.status_code == 201, response.json()
    # The header of the half file still claims the whole 2.8 s; the decoder finds about half.
    assert 1.0 <= response.json()["duration_seconds"] <= 1.6


def test_an_api_key_can_create_list_and_read_jobs(api_client, org, clip):
    headers = api_key_header(ApiKeyFactory(organisation=org, role=Role.MEMBER))

    created = post_file(api_client, headers, clip, language="en")
    listed = api_client.get(JOBS, **headers)
    detail = api_client.get(f"{JOBS}/{created.json()['id']}", **headers)

    assert created.status_code == 201, created.json()
    assert created.json()["created_by"] is None
    assert [row["id"] for row in listed.json()["results"]] == [created.json()["id"]]
    assert detail.status_code == 200


def test_a_viewer_api_key_cannot_create_a_job(api_client, org, clip, media_root):
    headers = api_key_header(ApiKeyFactory(organisation=org, role=Role.VIEWER))

    response = post_file(api_client, headers, clip, language="en")

    assert_error(response, 403, "insufficient_role")
    assert media_files(media_root) == []


def test_calls_without_credentials_get_401_with_the_error_body(api_client, clip):
    assert_error(api_client.get(JOBS), 401, "not_authenticated")
    assert_error(post_file(api_client, {}, clip), 401, "not_authenticated")


# ---- idempotency -------------------------------------------------------------------------------
def test_the_same_idempotency_key_header_returns_the_same_job(api_client, auth, clip, media_root):
    headers = {**auth, "HTTP_IDEMPOTENCY_KEY": "upload-42"}

    first = post_file(api_client, headers, clip, language="en")
    second = post_file(api_client, headers, clip, language="en")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["idempotency_key"] == "upload-42"
    assert TranscriptionJob.objects.count() == 1
    assert len(media_files(media_root)) == 1


def test_the_same_idempotency_key_field_returns_the_job_without_validating_again(
    api_client, auth, clip, tmp_path, media_root
):
    not_audio = tmp_path / "notes.mp3"
    not_audio.write_text("this is not audio")

    first = post_file(api_client, auth, clip, language="en", idempotency_key="k-1")
    replay = post_file(api_client, auth, not_audio, language="en", idempotency_key="k-1")

    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["id"] == first.json()["id"]
    assert TranscriptionJob.objects.count() == 1
    assert len(media_files(media_root)) == 1


def test_idempotency_keys_are_scoped_to_the_organisation(api_client, auth, clip):
    other = bearer(member(Role.OWNER).user)

    mine = post_file(api_client, {**auth, "HTTP_IDEMPOTENCY_KEY": "same"}, clip, language="en")
    theirs = post_file(api_client, {**other, "HTTP_IDEMPOTENCY_KEY": "same"}, clip, language="en")

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def test_an_idempotency_key_over_200_characters_is_refused(api_client, auth, clip, media_root):
    response = post_file(api_client, {**auth, "HTTP_IDEMPOTENCY_KEY": "k" * 201}, clip)

    assert_error(response, 400, "invalid_idempotency_key")
    assert media_files(media_root) == []


def test_concurrent_uploads_with_one_idempotency_key_make_one_job(
    transactional_db, owner, clip, media_root
):
    # Both requests pass the "no job with this key yet" check before either inserts: the unique
    # constraint then decides, and the loser answers with the winner's job and removes its file.
    headers = {**bearer(owner.user, owner.organisation), "HTTP_IDEMPOTENCY_KEY": "race"}
    barrier = threading.Barrier(2, timeout=20)
    probe = services.probe_upload

    def probe_together(path):
        barrier.wait()
        return probe(path)

    responses = []

    def send():
        try:
            responses.append(post_file(Client(), headers, clip, language="en"))
        finally:
            connection.close()

    with (
        mock.patch.object(services, "probe_upload", probe_together),
        mock.patch("workers.transcription.transcribe_job.apply_async") as publish,
    ):
        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    assert sorted(r.status_code for r in responses) == [200, 201]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    job = TranscriptionJob.objects.get()
    assert media_files(media_root) == [job.audio_key]
    publish.assert_called_once()


# ---- create: refused input ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "field",
    ["organisation", "status", "attempts", "audio_key", "created_by", "audio_validated", "engine"],
)
def test_fields_that_are_not_options_are_refused(api_client, auth, clip, media_root, field):
    response = post_file(api_client, auth, clip, language="en", **{field: "x"})

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {field: ["Unknown field."]}
    assert TranscriptionJob.objects.count() == 0
    assert media_files(media_root) == []


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"language": "xx"}, "language", "Language 'xx' is not supported"),
        # A Whisper code (large-v3's) that the installed models' vocabularies lack.
        ({"language": "yue"}, "language", "not supported by the model 'base'"),
        ({"language": "yue", "model": "base"}, "language", "use 'zh'"),
        ({"language": "fr", "model": "tiny.en"}, "model", "cannot transcribe 'fr' audio"),
        ({"model": "tiny.en"}, "model", "cannot detect the language"),
        ({"model": "large-v3"}, "model", "is not a valid choice"),
        ({"task": "summarise"}, "task", "is not a valid choice"),
        # Never called by earlier releases: refused, pointing at webhooks.
        ({"callback_url": "https://example.com/done"}, "callback_url", "webhook endpoint"),
    ],
)
def test_invalid_options_are_refused_with_the_field_named(
    api_client, auth, clip, media_root, fields, field, message
):
    response = post_file(api_client, auth, clip, **fields)

    error = assert_error(response, 400, "validation_error")
    assert list(error["details"]) == [field]
    assert message in error["details"][field][0]
    assert media_files(media_root) == []


def test_no_language_chooses_detection_and_a_known_language_is_normalised(api_client, auth, clip):
    detected = post_file(api_client, auth, clip)
    tagged = post_file(api_client, auth, clip, language="PT-br")

    assert detected.status_code == tagged.status_code == 201
    assert (detected.json()["language"], detected.json()["model"]) == ("", "")
    assert tagged.json()["language"] == "pt"


UNSUPPORTED = {
    "text renamed .wav": b"Meeting notes: revenue grew by twelve percent.\n" * 20,
    "html": b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    "exe": b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 120,
}


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("audio.wav", b"RIFF....WAVE")
    return buffer.getvalue()


UNSUPPORTED["zip"] = _zip()


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_content_that_is_not_supported_audio_is_refused_with_415(
    api_client, auth, media_root, upload_tmp, name
):
    response = post_raw(api_client, auth, multipart("recording.wav", UNSUPPORTED[name]))

    error = assert_error(response, 415, "unsupported_media_type")
    assert "Upload WAV, MP3, FLAC" in error["message"]
    assert TranscriptionJob.objects.count() == 0
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


@pytest.fixture
def canary():
    """An HTTP server on loopback that records every request it gets (there must be none)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


ID3_EMPTY_TAG = b"ID3\x04\x00\x00\x00\x00\x00\x00"
HLS = (
    "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
    "#EXTINF:10.0,\nhttp://{canary}/segment.ts\n#EXTINF:10.0,\nfile:///etc/passwd\n"
    "#EXT-X-ENDLIST\n"
)
CONCAT = "ffconcat version 1.0\nfile http://{canary}/part.wav\nfile /etc/passwd\n"


@pytest.mark.parametrize(
    ("prefix", "script"),
    [(b"", HLS), (ID3_EMPTY_TAG, HLS), (b"", CONCAT), (ID3_EMPTY_TAG, CONCAT)],
    ids=[
        "hls playlist",
        "hls playlist behind an id3 tag",
        "ffconcat",
        "ffconcat behind an id3 tag",
    ],
)
def test_playlists_and_concat_scripts_are_refused_without_following_them(
    api_client, auth, media_root, canary, prefix, script
):
    # Behind an ID3 tag the magic-byte check passes; ffprobe's demuxer whitelist refuses it.
    address, hits = canary
    content = prefix + script.format(canary=address).encode()

    response = post_raw(api_client, auth, multipart("song.mp3", content))

    assert_error(response, 415, "unsupported_media_type")
    assert hits == []
    assert TranscriptionJob.objects.count() == 0
    assert media_files(media_root) == []


def test_an_empty_file_is_refused_with_400(api_client, auth, media_root, upload_tmp):
    response = post_raw(api_client, auth, multipart("empty.mp3", b"", language="en"))

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"file": ["The submitted file is empty."]}
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def _cut(path: Path, size: int) -> bytes:
    return path.read_bytes()[:size]


@pytest.mark.parametrize(
    ("fmt", "keep", "code"),
    [
        ("mp3", 200, "corrupt_media"),  # the tag and no frame
        ("flac", 200, "corrupt_media"),  # the stream header only
        ("m4a", 0.5, "corrupt_media"),  # the index (moov) is at the end: cut off
        ("ogg", 0.5, "corrupt_media"),
        ("wav", 200, "empty_media"),  # a header and a few samples: nothing playable
    ],
)
def test_corrupt_or_truncated_audio_is_refused_with_400(
    api_client, auth, speech, media_root, upload_tmp, fmt, keep, code
):
    audio = speech.say(SPOKEN, fmt=fmt)
    size = keep if isinstance(keep, int) else int(audio.stat().st_size * keep)

    response = post_raw(api_client, auth, multipart(f"broken.{fmt}", _cut(audio, size)))

    assert_error(response, 400, code)
    assert TranscriptionJob.objects.count() == 0
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def test_a_declared_content_length_over_the_limit_is_refused_before_reading(
    api_client, auth, clip, settings, media_root, upload_tmp
):
    settings.AUDIO_MAX_UPLOAD_BYTES = 1000  # the clip is ~22 kB; the margin for the envelope 64 KiB
    body = multipart("big.mp3", clip.read_bytes() * 4)

    with mock.patch.object(services, "probe_upload") as probe:
        response = post_raw(api_client, auth, body)

    error = assert_error(response, 413, "file_too_large")
    assert error["details"] == {"max_bytes": 1000}
    probe.assert_not_called()
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def test_a_body_that_grows_past_the_limit_is_cut_off_and_its_temp_file_removed(
    api_client, auth, clip, settings, media_root, upload_tmp
):
    # Within the envelope margin, so the declared length passes and the streamed bytes count.
    settings.AUDIO_MAX_UPLOAD_BYTES = clip.stat().st_size - 100

    with mock.patch.object(services, "probe_upload") as probe:
        response = post_file(api_client, auth, clip, language="en")

    error = assert_error(response, 413, "file_too_large")
    assert error["details"] == {"max_bytes": clip.stat().st_size - 100}
    probe.assert_not_called()
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def test_audio_longer_than_the_limit_is_refused_with_413(
    api_client, auth, clip, settings, media_root, upload_tmp
):
    settings.AUDIO_MAX_DURATION_SECONDS = 1

    response = post_file(api_client, auth, clip, language="en")

    error = assert_error(response, 413, "duration_limit_exceeded")
    assert "longer than the limit of 1 s" in error["message"]
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def test_a_second_file_in_one_request_is_refused_and_both_temp_files_removed(
    api_client, auth, clip, media_root, upload_tmp
):
    with clip.open("rb") as first, clip.open("rb") as second:
        response = api_client.post(
            JOBS, {"file": first, "other": second}, format="multipart", **auth
        )

    assert_error(response, 400, "too_many_files")
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def test_a_form_with_too_many_fields_is_refused(api_client, auth, clip, media_root, upload_tmp):
    fields = {f"field{n}": "x" for n in range(250)}

    response = post_file(api_client, auth, clip, **fields)

    assert_error(response, 400, "too_many_fields")
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def test_form_fields_over_the_memory_limit_are_refused_with_413(
    api_client, auth, clip, settings, media_root, upload_tmp
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000

    response = post_file(api_client, auth, clip, initial_prompt="word " * 4_000)

    assert_error(response, 413, "request_too_large")
    assert media_files(media_root) == []
    assert list(upload_tmp.iterdir()) == []


def test_a_json_request_cannot_smuggle_a_file_field(api_client, auth):
    response = api_client.post(
        JOBS,
        {"upload_id": "2b0f7f0e-9d7e-4a43-9a4b-0c6f1d2e3f40", "file": "x"},
        format="json",
        **auth,
    )

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"file": ["Unknown field."]}


# ---- quota -------------------------------------------------------------------------------------
def test_an_exhausted_quota_answers_402_before_the_file_is_examined(
    api_client, auth, org, settings, media_root
):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {"free": 1, "team": 10, "enterprise": None}
    CompletedJobFactory(organisation=org, duration_seconds=60.0)

    # Not even audio: the quota is checked first, so the answer is 402, not 415.
    response = post_raw(api_client, auth, multipart("notes.mp3", b"not audio at all"))

    error = assert_error(response, 402, "quota_exceeded")
    assert error["details"]["limit_minutes"] == 1
    assert error["details"]["used_minutes"] == 1.0
    assert error["details"]["resets_at"].startswith(
        (timezone.now().replace(day=1) + timedelta(days=32)).strftime("%Y-%m-01")
    )
    assert TranscriptionJob.objects.count() == 1
    assert media_files(media_root) == []


def test_a_file_longer_than_the_remaining_quota_answers_402(
    api_client, auth, org, clip, settings, media_root
):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {"free": 1, "team": 10, "enterprise": None}
    CompletedJobFactory(organisation=org, duration_seconds=58.5)  # 1.5 s left; the clip is 2.7 s

    response = post_file(api_client, auth, clip, language="en")

    error = assert_error(response, 402, "quota_exceeded")
    assert "this file would exceed them" in error["message"]
    assert error["details"]["requested_minutes"] == 0.05
    assert media_files(media_root) == []


def test_failed_and_cancelled_jobs_that_never_started_do_not_count_against_the_quota(
    api_client, auth, org, clip, settings
):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {"free": 1, "team": 10, "enterprise": None}
    JobFactory(organisation=org, status=JobStatus.CANCELLED, duration_seconds=60.0)
    JobFactory(organisation=org, status=JobStatus.FAILED, duration_seconds=60.0)
    JobFactory(organisation=org, duration_seconds=50.0)
    old = JobFactory(organisation=org, status=JobStatus.COMPLETED, duration_seconds=600.0)
    last_month = timezone.now().replace(day=1) - timedelta(days=1)
    TranscriptionJob.objects.filter(pk=old.pk).update(created_at=last_month)
    AudioUsage.objects.filter(job_id=old.pk).update(job_created_at=last_month)

    response = post_file(api_client, auth, clip, language="en")

    assert response.status_code == 201, response.json()


# ---- file names --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ('a\\"; filename=x.html', "a; filename=x.html"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("CON", "CON"),
        ("récit-" + "é" * 300 + ".mp3", None),
    ],
)
def test_client_file_names_are_sanitised_and_never_part_of_the_storage_key(
    api_client, auth, org, clip, media_root, sent, stored
):
    response = post_raw(api_client, auth, multipart(sent, clip.read_bytes(), language="en"))

    assert response.status_code == 201, response.json()
    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    name = response.json()["original_filename"]
    if stored is not None:
        assert name == stored
    assert len(name) <= 200
    assert not set(name) & set('/\\"\r\n')
    assert job.audio_key == f"org/{org.pk}/audio/{job.pk}.mp3"
    assert media_files(media_root) == [job.audio_key]


# ---- roles -------------------------------------------------------------------------------------
def test_a_viewer_can_read_but_not_create_cancel_or_delete(api_client, org, clip, media_root):
    viewer = as_role(Role.VIEWER, org)
    job = JobFactory(organisation=org)

    created = post_file(api_client, viewer, clip, language="en")
    cancelled = api_client.post(f"{JOBS}/{job.pk}/cancel", **viewer)
    deleted = api_client.delete(f"{JOBS}/{job.pk}", **viewer)
    read = api_client.get(f"{JOBS}/{job.pk}", **viewer)

    for response in (created, cancelled, deleted):
        assert_error(response, 403, "insufficient_role")
    assert read.status_code == 200
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert media_files(media_root) == []


def test_a_member_can_create_cancel_and_delete(api_client, org, clip):
    headers = as_role(Role.MEMBER, org)
    job = JobFactory(organisation=org)

    created = post_file(api_client, headers, clip, language="en")
    cancelled = api_client.post(f"{JOBS}/{job.pk}/cancel", **headers)
    deleted = api_client.delete(f"{JOBS}/{created.json()['id']}", **headers)

    assert created.status_code == 201
    assert cancelled.status_code == 200
    assert deleted.status_code == 204


# ---- rate limit --------------------------------------------------------------------------------
def test_the_uploads_scope_answers_429_when_exceeded(api_client, auth, settings):
    settings.PLAN_RATE_LIMITS = {
        **settings.PLAN_RATE_LIMITS,
        "free": {"api": "300/m", "uploads": "2/m"},
    }

    first = api_client.post(JOBS, {}, format="json", **auth)
    second = api_client.post("/api/v1/uploads", {"size_bytes": 10}, format="json", **auth)
    third = api_client.post(JOBS, {}, format="json", **auth)
    listing = api_client.get(JOBS, **auth)

    assert first.status_code == 400
    assert second.status_code == 409  # local storage; the call still counts
    error = assert_error(third, 429, "throttled")
    assert error["details"] == {"retry_after_seconds": int(third["Retry-After"])}
    assert listing.status_code == 200  # listing counts only against the general rate


# ---- list, detail ------------------------------------------------------------------------------
def test_the_list_filters_by_status(api_client, auth, org):
    queued = JobFactory(organisation=org)
    done = CompletedJobFactory(organisation=org)
    JobFactory(organisation=org, status=JobStatus.FAILED)

    everything = api_client.get(JOBS, **auth)
    completed = api_client.get(JOBS, {"status": "completed"}, **auth)
    waiting = api_client.get(JOBS, {"status": "queued"}, **auth)

    assert everything.json()["count"] == 3
    assert [row["id"] for row in completed.json()["results"]] == [str(done.pk)]
    assert [row["id"] for row in waiting.json()["results"]] == [str(queued.pk)]
    assert (
        completed.json()["results"][0]["links"]["transcript"]
        == f"/api/v1/jobs/{done.pk}/transcript"
    )


def test_the_list_filters_by_creation_time_newest_first(api_client, auth, org):
    now = timezone.now()
    jobs = [JobFactory(organisation=org) for _ in range(3)]
    for days, job in zip([30, 10, 1], jobs, strict=True):
        TranscriptionJob.objects.filter(pk=job.pk).update(created_at=now - timedelta(days=days))

    recent = api_client.get(JOBS, {"created_after": (now - timedelta(days=15)).isoformat()}, **auth)
    older = api_client.get(JOBS, {"created_before": (now - timedelta(days=5)).isoformat()}, **auth)
    window = api_client.get(
        JOBS,
        {
            "created_after": (now - timedelta(days=20)).isoformat(),
            "created_before": (now - timedelta(days=5)).isoformat(),
        },
        **auth,
    )

    assert [r["id"] for r in recent.json()["results"]] == [str(jobs[2].pk), str(jobs[1].pk)]
    assert [r["id"] for r in older.json()["results"]] == [str(jobs[1].pk), str(jobs[0].pk)]
    assert [r["id"] for r in window.json()["results"]] == [str(jobs[1].pk)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "done"}, "status"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"page_size": "0"}, "page_size"),
    ],
)
def test_invalid_list_filters_are_refused(api_client, auth, query, field):
    response = api_client.get(JOBS, query, **auth)

    error = assert_error(response, 400, "validation_error")
    assert list(error["details"]) == [field]


def test_the_list_is_paginated_and_the_page_size_is_capped_at_100(api_client, auth, org):
    JobFactory.create_batch(105, organisation=org)

    default = api_client.get(JOBS, **auth)
    small = api_client.get(JOBS, {"page_size": 10, "page": 2}, **auth)
    huge = api_client.get(JOBS, {"page_size": 1_000_000}, **auth)

    assert default.json()["count"] == 105
    assert len(default.json()["results"]) == 25
    assert len(small.json()["results"]) == 10
    assert "page=3" in small.json()["next"]
    assert huge.status_code == 200
    assert len(huge.json()["results"]) == 100


def test_the_detail_shows_the_job_and_its_error(api_client, auth, org):
    job = JobFactory(
        organisation=org,
        status=JobStatus.FAILED,
        error_code="corrupt_media",
        error_message="The audio could not be decoded.",
    )

    response = api_client.get(f"{JOBS}/{job.pk}", **auth)

    assert response.status_code == 200
    assert response.json()["id"] == str(job.pk)
    assert response.json()["error"] == {
        "code": "corrupt_media",
        "message": "The audio could not be decoded.",
    }


def test_an_unknown_job_is_404_with_the_error_body(api_client, auth):
    response = api_client.get(f"{JOBS}/2b0f7f0e-9d7e-4a43-9a4b-0c6f1d2e3f40", **auth)

    assert_error(response, 404, "job_not_found")


# ---- cancel and delete -------------------------------------------------------------------------
def test_cancelling_a_queued_job_cancels_it_at_once(api_client, auth, org):
    job = JobFactory(organisation=org)

    response = api_client.post(f"{JOBS}/{job.pk}/cancel", **auth)

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (JobStatus.CANCELLED, True)
    assert job.finished_at is not None


def test_cancelling_a_processing_job_asks_its_worker_to_stop(api_client, auth, org):
    job = JobFactory(organisation=org, status=JobStatus.PROCESSING)

    response = api_client.post(f"{JOBS}/{job.pk}/cancel", **auth)

    assert response.status_code == 200
    assert response.json()["status"] == "processing"
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (JobStatus.PROCESSING, True)


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_cancelling_a_finished_job_is_a_conflict(api_client, auth, org, status):
    job = JobFactory(organisation=org, status=status)

    response = api_client.post(f"{JOBS}/{job.pk}/cancel", **auth)

    error = assert_error(response, 409, "job_not_cancellable")
    assert status in error["message"]
    job.refresh_from_db()
    assert job.status == status


def test_deleting_a_job_removes_its_row_transcript_and_audio(
    api_client, auth, clip, media_root, django_capture_on_commit_callbacks
):
    job_id = post_file(api_client, auth, clip, language="en").json()["id"]
    TranscriptionJob.objects.filter(pk=job_id).update(status=JobStatus.COMPLETED)
    TranscriptFactory(job=TranscriptionJob.objects.get(pk=job_id))
    assert len(media_files(media_root)) == 1

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete(f"{JOBS}/{job_id}", **auth)

    assert response.status_code == 204
    assert not TranscriptionJob.objects.filter(pk=job_id).exists()
    assert not Transcript.objects.filter(job_id=job_id).exists()
    assert media_files(media_root) == []
    assert_error(api_client.get(f"{JOBS}/{job_id}", **auth), 404, "job_not_found")


# ---- transcript downloads ----------------------------------------------------------------------
@pytest.fixture
def transcript(org) -> Transcript:
    job = CompletedJobFactory(organisation=org, original_filename="Board meeting.mp3")
    return TranscriptFactory(job=job)


def get_transcript(client, headers, job, **query):
    return client.get(f"{JOBS}/{job.pk}/transcript", query, **headers)


def test_the_transcript_downloads_as_plain_text(api_client, auth, transcript):
    response = get_transcript(api_client, auth, transcript.job, format="txt")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == (
        "attachment; filename=\"Board_meeting.txt\"; filename*=UTF-8''Board%20meeting.txt"
    )
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.content.decode() == (
        "The quarterly report is ready.\nRevenue grew <fast> & well.\n"
    )


def test_the_transcript_downloads_as_srt_with_comma_timestamps(api_client, auth, transcript):
    response = get_transcript(api_client, auth, transcript.job, format="srt")

    assert response["Content-Type"] == "application/x-subrip; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="Board_meeting.srt"')
    assert response.content.decode() == (
        "1\n00:00:00,520 --> 00:00:03,100\nThe quarterly report is ready.\n\n"
        "2\n01:00:04,250 --> 01:00:06,500\nRevenue grew <fast> & well.\n"
    )


def test_the_transcript_downloads_as_webvtt_with_escaped_text(api_client, auth, transcript):
    response = get_transcript(api_client, auth, transcript.job, format="vtt")

    assert response["Content-Type"] == "text/vtt; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="Board_meeting.vtt"')
    assert response.content.decode() == (
        "WEBVTT\n\n00:00:00.520 --> 00:00:03.100\nThe quarterly report is ready.\n\n"
        "01:00:04.250 --> 01:00:06.500\nRevenue grew &lt;fast&gt; &amp; well.\n"
    )


def test_the_transcript_downloads_as_openai_verbose_json(api_client, auth, transcript):
    response = get_transcript(api_client, auth, transcript.job, format="json")

    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith('attachment; filename="Board_meeting.json"')
    body = json.loads(response.content)
    assert set(body) == {"task", "language", "duration", "text", "segments", "words"}
    assert (body["task"], body["language"], body["duration"]) == ("transcribe", "en", 3607.0)
    assert body["text"] == "The quarterly report is ready. Revenue grew <fast> & well."
    assert set(body["segments"][0]) == {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert [(s["id"], s["start"], s["end"]) for s in body["segments"]] == [
        (0, 0.52, 3.1),
        (1, 3604.25, 3606.5),
    ]
    assert body["words"][:2] == [
        {"word": "The", "start": 0.52, "end": 0.7},
        {"word": "quarterly", "start": 0.7, "end": 1.32},
    ]
    assert len(body["words"]) == 10


def test_silence_of_unknown_language_is_transcribed_with_no_language(
    api_client, auth, org, speech, media_root
):
    """No language was asked for and none was heard: "" with probability 0, not a guess."""
    from django.core.files import File
    from django.core.files.storage import default_storage

    from workers.transcription import transcribe_job

    with speech.silence(6).open("rb") as handle:
        key = default_storage.save(f"org/{org.pk}/audio/silence.wav", File(handle))
    job = JobFactory(organisation=org, audio_key=key, language="", duration_seconds=6.0)

    assert transcribe_job.apply(args=[str(job.pk)]).get() == "completed"

    body = get_transcript(api_client, auth, job, download="false").json()
    assert (body["language"], body["text"], body["segments"]) == ("", "", [])
    transcript = Transcript.objects.get(job=job)
    assert (transcript.language, transcript.language_probability) == ("", 0.0)


def test_the_transcript_is_json_by_default_and_inline_on_request(api_client, auth, transcript):
    response = get_transcript(api_client, auth, transcript.job, download="false")

    assert response["Content-Type"] == "application/json"
    assert "Content-Disposition" not in response
    assert json.loads(response.content)["language"] == "en"


def test_inline_json_is_compact_and_the_download_is_indented(api_client, auth, transcript):
    inline = get_transcript(api_client, auth, transcript.job, download="false")
    download = get_transcript(api_client, auth, transcript.job, format="json")

    assert b"\n  " not in inline.content
    assert b'\n  "task"' in download.content
    assert json.loads(inline.content) == json.loads(download.content)


def test_a_rendered_transcript_is_served_from_the_cache(api_client, auth, transcript):
    first = get_transcript(api_client, auth, transcript.job, format="srt")

    with CaptureQueriesContext(connection) as queries:
        second = get_transcript(api_client, auth, transcript.job, format="srt")

    assert second.content == first.content
    assert second["Content-Disposition"] == first["Content-Disposition"]
    # The job comes from the organisation's cached reads, the body from the transcript cache.
    sql = " ".join(query["sql"] for query in queries)
    assert "audio_jobs_transcriptionjob" not in sql
    assert 'audio_jobs_transcript"' not in sql


def test_another_organisation_never_gets_a_cached_transcript(api_client, auth, transcript):
    assert get_transcript(api_client, auth, transcript.job, format="txt").status_code == 200
    stranger = member(Role.OWNER)

    response = get_transcript(api_client, bearer(stranger.user), transcript.job, format="txt")

    assert_error(response, 404, "job_not_found")


def test_deleting_a_job_drops_its_cached_transcripts(
    api_client, auth, transcript, django_capture_on_commit_callbacks
):
    from apps.audio_jobs import transcripts

    job_id = transcript.job.pk
    for fmt in ("txt", "json"):
        assert get_transcript(api_client, auth, transcript.job, format=fmt).status_code == 200
    assert cache.get(transcripts._key(job_id, "txt", False)) is not None

    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"{JOBS}/{job_id}", **auth).status_code == 204

    assert cache.get_many(transcripts._all_keys(job_id)) == {}


def test_transcripts_render_without_the_cache(api_client, auth, transcript, settings, monkeypatch):
    cached = get_transcript(api_client, auth, transcript.job, format="vtt").content
    settings.TRANSCRIPT_CACHE_SECONDS = 0
    assert get_transcript(api_client, auth, transcript.job, format="vtt").content == cached

    settings.TRANSCRIPT_CACHE_SECONDS = 600

    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "get", down)
    monkeypatch.setattr(cache, "set", down)
    assert get_transcript(api_client, auth, transcript.job, format="vtt").content == cached


@pytest.mark.parametrize(
    ("original", "fallback", "encoded"),
    [
        ('a"; filename=x.html', "a_filename_x.srt", "a%3B%20filename%3Dx.srt"),
        ("réunion été.mp3", "reunion_ete.srt", "r%C3%A9union%20%C3%A9t%C3%A9.srt"),
        ("", "audio.srt", "audio.srt"),
        # No ASCII letters: the fallback stem keeps the extension (not a file called "srt").
        ("会议记录.mp3", "transcript.srt", "%E4%BC%9A%E8%AE%AE%E8%AE%B0%E5%BD%95.srt"),
    ],
)
def test_download_names_are_safe_in_the_content_disposition(
    api_client, auth, org, original, fallback, encoded
):
    job = CompletedJobFactory(organisation=org, original_filename=original)
    TranscriptFactory(job=job)

    response = get_transcript(api_client, auth, job, format="srt")

    assert response["Content-Disposition"] == (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    )


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.FAILED])
def test_the_transcript_of_an_unfinished_job_is_a_conflict(api_client, auth, org, status):
    job = JobFactory(organisation=org, status=status)

    response = get_transcript(api_client, auth, job, format="srt")

    error = assert_error(response, 409, "transcript_not_ready")
    assert response["Content-Type"] == "application/json"
    assert status in error["message"]


def test_an_unknown_transcript_format_is_refused(api_client, auth, transcript):
    response = get_transcript(api_client, auth, transcript.job, format="docx")

    error = assert_error(response, 400, "validation_error")
    assert list(error["details"]) == ["format"]


def test_an_api_key_can_download_a_transcript(api_client, org, transcript):
    headers = api_key_header(ApiKeyFactory(organisation=org, role=Role.VIEWER))

    response = get_transcript(api_client, headers, transcript.job, format="txt")

    assert response.status_code == 200
    assert response.content.decode().startswith("The quarterly report")


# ---- another organisation's upload -------------------------------------------------------------
@pytest.mark.parametrize("role", [Role.OWNER, Role.MEMBER])
def test_another_organisations_upload_id_is_not_found_like_an_unknown_one(api_client, org, role):
    headers = as_role(role, org)
    foreign = UploadFactory(organisation=OrganisationFactory())

    response = api_client.post(JOBS, {"upload_id": str(foreign.pk)}, format="json", **headers)
    unknown = api_client.post(
        JOBS, {"upload_id": "2b0f7f0e-9d7e-4a43-9a4b-0c6f1d2e3f40"}, format="json", **headers
    )

    assert_error(response, 404, "upload_not_found")
    assert_error(unknown, 404, "upload_not_found")
    assert str(foreign.pk) not in response.content.decode()
    foreign.refresh_from_db()
    assert foreign.status == "pending"
