"""The OpenAI-compatible endpoints with the test client and no worker: validation, auth, the
limits (waiting cap, wait timeout, file size) and the mapping of a job's end to a response.
Jobs are finished by hand where a test needs them finished (tests/openai_compat/test_e2e.py
runs the real worker)."""

from __future__ import annotations

import io

import pytest
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs.models import JobStatus, JobTask, Transcript, TranscriptionJob
from apps.openai_compat import services, waiting
from tests.factories import ApiKeyFactory, bearer, member

from .conftest import TRANSLATIONS_URL, URL

pytestmark = pytest.mark.django_db

BOGUS_KEY = "lxk_0123456789ab_" + "A" * 43
SEGMENTS = [
    {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": 2.5,
        "text": " Hello there.",
        "no_speech_prob": 0.01,
        "words": [
            {"word": " Hello", "start": 0.1, "end": 0.6, "probability": 0.9},
            {"word": " there.", "start": 0.7, "end": 1.2, "probability": 0.9},
        ],
    },
    {
        "id": 1,
        "seek": 0,
        "start": 3.0,
        "end": 4.0,
        "text": " Goodbye.",
        "no_speech_prob": 0.02,
        "words": [{"word": " Goodbye.", "start": 3.1, "end": 3.8, "probability": 0.9}],
    },
]


@pytest.fixture
def owner():
    return member(Role.OWNER)


@pytest.fixture
def key(owner):
    return ApiKeyFactory(organisation=owner.organisation)


@pytest.fixture
def auth(key):
    return {"HTTP_AUTHORIZATION": f"Bearer {key.raw_key}"}


@pytest.fixture
def no_wait(settings):
    settings.OPENAI_COMPAT_WAIT_SECONDS = 0


def post(client, auth, clip=None, url=URL, **fields):
    data = dict(fields)
    if clip is not None:
        data["file"] = clip.open("rb")
    return client.post(url, data, **auth)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"message", "type", "param", "code", "request_id"} <= set(error)
    assert error["request_id"] == response["X-Request-ID"]
    return error


def finish_with(monkeypatch, **job_fields):
    """Make the next wait find its job in this state (written before the real poll)."""
    real_wait = waiting.job_wait

    def wait(*, organisation_id, job_id, timeout, **kwargs):
        transcript = job_fields.pop("transcript", None)
        TranscriptionJob.objects.filter(pk=job_id).update(finished_at=timezone.now(), **job_fields)
        if transcript is not None:
            Transcript.objects.create(job_id=job_id, **transcript)
        return real_wait(organisation_id=organisation_id, job_id=job_id, timeout=5, **kwargs)

    monkeypatch.setattr(services.waiting, "job_wait", wait)


def completed(monkeypatch, text=" Hello there. Goodbye."):
    finish_with(
        monkeypatch,
        status=JobStatus.COMPLETED,
        progress=100.0,
        transcript={
            "text": text,
            "language": "en",
            "language_probability": 0.99,
            "duration": 4.2,
            "segments": SEGMENTS,
        },
    )


# ---- responses ------------------------------------------------------------------------------


def test_json_answers_the_text_and_names_the_job(client, auth, clip, monkeypatch):
    completed(monkeypatch)

    response = post(client, auth, clip, model="whisper-1")

    assert response.status_code == 200, response.content
    assert response.json() == {"text": "Hello there. Goodbye."}
    job = TranscriptionJob.objects.get(pk=response["X-LexisCore-Job-Id"])
    assert job.model_profile == ""
    assert job.task == JobTask.TRANSCRIBE
    assert job.word_timestamps is False


@pytest.mark.parametrize(
    ("fmt", "media_type", "start"),
    [
        ("text", "text/plain; charset=utf-8", "Hello there. Goodbye.\n"),
        ("srt", "application/x-subrip; charset=utf-8", "1\n00:00:00,100 --> "),
        ("vtt", "text/vtt; charset=utf-8", "WEBVTT\n\n00:00:00.100 --> "),
    ],
)
def test_plain_formats_are_plain_bodies(client, auth, clip, monkeypatch, fmt, media_type, start):
    completed(monkeypatch)

    response = post(client, auth, clip, response_format=fmt)

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == media_type
    assert response.content.decode().startswith(start)


def test_verbose_json_has_words_only_when_asked(client, auth, clip, monkeypatch):
    completed(monkeypatch)
    plain = post(client, auth, clip, response_format="verbose_json")
    completed(monkeypatch)

    worded = post(
        client,
        auth,
        clip,
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    )

    assert plain.status_code == 200, plain.content
    assert set(plain.json()) == {"task", "language", "duration", "text", "segments"}
    assert plain.json()["text"] == "Hello there. Goodbye."
    assert plain.json()["language"] == "english"  # OpenAI's name, not Whisper's code
    assert [s["text"] for s in plain.json()["segments"]] == [" Hello there.", " Goodbye."]
    assert worded.json()["words"] == [
        {"word": "Hello", "start": 0.1, "end": 0.6},
        {"word": "there.", "start": 0.7, "end": 1.2},
        {"word": "Goodbye.", "start": 3.1, "end": 3.8},
    ]
    assert TranscriptionJob.objects.get(pk=worded["X-LexisCore-Job-Id"]).word_timestamps is True


def test_word_granularity_alone_leaves_segments_out(client, auth, clip, monkeypatch):
    completed(monkeypatch)

    response = post(
        client,
        auth,
        clip,
        response_format="verbose_json",
        **{"timestamp_granularities[]": "word"},
    )

    assert response.status_code == 200, response.content
    assert "segments" not in response.json()
    assert len(response.json()["words"]) == 3


def test_translation_creates_a_translate_job_with_the_options(client, auth, clip, monkeypatch):
    completed(monkeypatch)

    response = post(
        client, auth, clip, url=TRANSLATIONS_URL, model="base", prompt="Quarterly", temperature=0
    )

    assert response.status_code == 200, response.content
    job = TranscriptionJob.objects.get(pk=response["X-LexisCore-Job-Id"])
    assert (job.task, job.model_profile, job.initial_prompt, job.language) == (
        JobTask.TRANSLATE,
        "base",
        "Quarterly",
        "",
    )


def test_language_and_model_profile_are_set_on_the_job(client, auth, clip, monkeypatch):
    completed(monkeypatch)

    response = post(client, auth, clip, model="tiny.en", language="EN")

    job = TranscriptionJob.objects.get(pk=response["X-LexisCore-Job-Id"])
    assert (job.language, job.model_profile) == ("en", "tiny.en")


# ---- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "gpt-4o-transcribe"}, "model"),
        ({"language": "xx"}, "language"),
        ({"language": "yue"}, "language"),
        ({"language": "fr", "model": "tiny.en"}, "model"),
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": "2"}, "temperature"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]"),
        ({"timestamp_granularities[]": "sentence", "response_format": "verbose_json"}, None),
        ({"stream": "true"}, "stream"),
    ],
)
def test_invalid_fields_are_400_naming_the_parameter(client, auth, clip, fields, param):
    response = post(client, auth, clip, **fields)

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "validation_error"
    assert error["param"] == (param or "timestamp_granularities[]")
    assert error["message"].startswith(f"{error['param']}: ")
    assert TranscriptionJob.objects.count() == 0


def test_a_missing_file_is_400_naming_file(client, auth):
    response = post(client, auth, model="whisper-1")

    assert response.status_code == 400
    assert error_of(response)["param"] == "file"


def test_translations_take_no_language(client, auth, clip):
    response = post(client, auth, clip, url=TRANSLATIONS_URL, language="fr")

    assert response.status_code == 400
    assert error_of(response)["param"] == "language"


def test_a_json_body_is_415(client, auth):
    response = client.post(URL, {"model": "whisper-1"}, content_type="application/json", **auth)

    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_a_file_that_is_not_audio_is_refused_before_any_job(client, auth):
    response = client.post(URL, {"file": io.BytesIO(b"not audio at all" * 100)}, **auth)

    assert response.status_code in (400, 415), response.content
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert TranscriptionJob.objects.count() == 0


def test_a_file_over_the_limit_is_413(client, auth, settings):
    settings.OPENAI_COMPAT_MAX_UPLOAD_BYTES = 1024
    upload = io.BytesIO(b"\0" * 200_000)
    upload.name = "big.wav"

    response = client.post(URL, {"file": upload}, **auth)

    assert response.status_code == 413
    error = error_of(response)
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    assert error["details"]["max_bytes"] == 1024
    assert TranscriptionJob.objects.count() == 0


# ---- auth -----------------------------------------------------------------------------------


def test_a_bearer_jwt_and_the_native_key_headers_authenticate(client, owner, key, clip, no_wait):
    credentials = [
        {"HTTP_AUTHORIZATION": bearer(owner.user, owner.organisation)["HTTP_AUTHORIZATION"]},
        {"HTTP_AUTHORIZATION": f"Api-Key {key.raw_key}"},
        {"HTTP_X_API_KEY": key.raw_key},
    ]

    codes = [post(client, auth, clip).status_code for auth in credentials]

    assert codes == [504, 504, 504]  # past auth, validation and job creation
    assert TranscriptionJob.objects.filter(organisation=owner.organisation).count() == 3


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {BOGUS_KEY}",
        "Bearer lxk_malformed",
        "Bearer not-a-jwt",
        f"Api-Key {BOGUS_KEY}",
    ],
)
def test_a_wrong_credential_is_401_in_openai_shape(client, clip, header):
    response = post(client, {"HTTP_AUTHORIZATION": header}, clip)

    assert response.status_code == 401
    error = error_of(response)
    assert error["type"] == "authentication_error"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_no_credential_is_401(client, clip):
    response = post(client, {}, clip)

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_a_revoked_key_is_401(client, key, auth, clip):
    key.revoked_at = timezone.now()
    key.save()

    response = post(client, auth, clip)

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


@pytest.mark.parametrize("kind", ["key", "user"])
def test_viewers_cannot_transcribe(client, clip, kind):
    viewer = member(Role.VIEWER)
    if kind == "key":
        auth = {
            "HTTP_AUTHORIZATION": "Bearer "
            + ApiKeyFactory(organisation=viewer.organisation, role=Role.VIEWER).raw_key
        }
    else:
        auth = bearer(viewer.user, viewer.organisation)

    response = post(client, auth, clip)

    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"
    assert TranscriptionJob.objects.count() == 0


def test_another_organisation_cannot_be_chosen(client, owner, auth, clip):
    other = member(Role.OWNER)
    header = {"HTTP_X_ORGANISATION": str(other.organisation.pk)}

    by_key = post(client, {**auth, **header}, clip)
    by_user = post(client, {**bearer(owner.user), **header}, clip)

    assert (by_key.status_code, by_user.status_code) == (404, 404)
    assert error_of(by_key)["code"] == "organisation_not_found"
    assert TranscriptionJob.objects.count() == 0


def test_a_job_belongs_to_the_key_organisation_only(client, owner, auth, clip, no_wait):
    other = member(Role.OWNER)

    response = post(client, auth, clip)
    other_list = client.get("/api/v1/jobs", **bearer(other.user, other.organisation))

    job = TranscriptionJob.objects.get(pk=response["X-LexisCore-Job-Id"])
    assert job.organisation_id == owner.organisation.pk
    assert other_list.json()["count"] == 0


def test_failed_authentications_are_limited_as_on_the_native_api(client, key, auth, clip, settings):
    settings.RATE_LIMIT_ENABLED = True
    settings.RATE_LIMIT_AUTH_FAILURES = "2/m"
    settings.OPENAI_COMPAT_WAIT_SECONDS = 0
    first = post(client, auth, clip)  # the key is now known to this process
    bad = {"HTTP_AUTHORIZATION": f"Bearer {BOGUS_KEY}"}

    codes = [post(client, bad, clip).status_code for _ in range(4)]
    known = post(client, auth, clip)

    assert first.status_code == 504
    assert codes == [401, 401, 429, 429]
    refused = post(client, bad, clip)
    assert error_of(refused)["type"] == "rate_limit_error"
    assert int(refused["Retry-After"]) >= 1
    assert known.status_code == 504  # a genuine key passes its address's limit


def test_the_upload_rate_applies(client, auth, clip, settings):
    settings.RATE_LIMIT_ENABLED = True
    settings.PLAN_RATE_LIMITS = {
        plan: {**rates, "uploads": "1/m"} for plan, rates in settings.PLAN_RATE_LIMITS.items()
    }

    first = post(client, auth)
    second = post(client, auth)

    assert first.status_code == 400  # no file, but counted
    assert second.status_code == 429
    assert error_of(second)["code"] == "throttled"


# ---- limits and job outcomes ----------------------------------------------------------------


def test_past_the_waiting_cap_the_answer_is_503_with_retry_after(client, auth, clip, settings):
    settings.OPENAI_COMPAT_MAX_WAITING = 1
    waiting.SLOTS.take()  # another request of this process is waiting

    response = post(client, auth, clip)

    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    error = error_of(response)
    assert (error["type"], error["code"]) == ("server_error", "transcription_busy")
    assert TranscriptionJob.objects.count() == 0
    assert waiting.SLOTS.taken == 1  # its place was not taken nor given back


def test_the_slot_is_given_back_after_every_answer(client, auth, clip, no_wait):
    post(client, auth, clip)
    post(client, auth)

    assert waiting.SLOTS.taken == 0


def test_a_timeout_is_504_naming_the_job_which_goes_on(client, auth, clip, no_wait):
    response = post(client, auth, clip)

    assert response.status_code == 504
    job_id = response["X-LexisCore-Job-Id"]
    error = error_of(response)
    assert (error["type"], error["code"]) == ("server_error", "transcription_timeout")
    assert job_id in error["message"]
    assert response["x-should-retry"] == "false"
    job = TranscriptionJob.objects.get(pk=job_id)
    assert job.status == JobStatus.QUEUED
    assert job.cancel_requested is False


@pytest.mark.parametrize(
    ("error_code", "status", "error_type", "param"),
    [
        ("corrupt_media", 400, "invalid_request_error", "file"),
        ("duration_limit_exceeded", 400, "invalid_request_error", "file"),
        ("unsupported_language", 400, "invalid_request_error", "language"),
        ("quota_exceeded", 429, "insufficient_quota", None),
        ("organisation_inactive", 403, "permission_error", None),
        ("time_limit", 500, "server_error", None),
        ("internal_error", 500, "server_error", None),
    ],
)
def test_a_failed_job_maps_to_its_status(
    client, auth, clip, monkeypatch, error_code, status, error_type, param
):
    finish_with(
        monkeypatch, status=JobStatus.FAILED, error_code=error_code, error_message="It failed."
    )

    response = post(client, auth, clip)

    assert response.status_code == status
    error = error_of(response)
    assert (error["code"], error["type"], error["param"]) == (error_code, error_type, param)
    assert response["X-LexisCore-Job-Id"] in error["message"]
    assert response["x-should-retry"] == "false"


def test_a_cancelled_job_is_409(client, auth, clip, monkeypatch):
    finish_with(monkeypatch, status=JobStatus.CANCELLED)

    response = post(client, auth, clip)

    assert response.status_code == 409
    assert error_of(response)["code"] == "job_cancelled"


def test_a_quota_used_up_at_creation_is_429_with_the_quota_code(
    client, owner, auth, clip, settings
):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {**settings.PLAN_AUDIO_MINUTES_PER_MONTH, "free": 0}
    owner.organisation.plan = "free"
    owner.organisation.save()

    response = post(client, auth, clip)

    assert response.status_code == 429
    error = error_of(response)
    assert (error["code"], error["type"]) == ("quota_exceeded", "insufficient_quota")
    assert response["x-should-retry"] == "false"


def test_native_errors_keep_their_shape(client, auth):
    response = client.get("/api/v1/jobs/not-a-job", **auth)

    assert set(response.json()["error"]) == {"code", "message", "details", "request_id"}


# ---- review fixes -----------------------------------------------------------------------------


def test_an_error_after_the_job_exists_names_it_and_asks_for_no_retry(
    client, auth, clip, monkeypatch
):
    """A database outage while waiting answers 503; an SDK would retry it, uploading and
    transcribing (and counting) the file again: the answer says not to, and names the job."""
    from django.db import OperationalError

    def outage(**kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(services.waiting, "job_wait", outage)

    response = post(client, auth, clip)

    job = TranscriptionJob.objects.get()
    error = error_of(response)
    assert response.status_code == 503
    assert response["x-should-retry"] == "false"
    assert response["X-LexisCore-Job-Id"] == str(job.pk)
    assert error["details"]["job_id"] == str(job.pk)


def test_an_error_before_any_job_may_be_retried(client, auth, clip, settings):
    settings.OPENAI_COMPAT_MAX_WAITING = 0

    response = post(client, auth, clip)

    assert response.status_code == 503
    assert "x-should-retry" not in response
    assert not TranscriptionJob.objects.exists()


@pytest.mark.parametrize("path", ["embeddings", "audio/speech", "audio/transcriptions/x", ""])
def test_other_addresses_under_the_prefix_are_404_in_openai_shape(client, auth, path):
    response = client.get(f"/api/openai/v1/{path}", **auth)

    assert response.status_code == 404
    body = response.json()
    assert body["error"]["code"] == "not_found"
    assert {"message", "type", "param", "code"} <= set(body["error"])


def test_models_lists_whisper_1_and_every_profile_in_openais_shape(client, auth):
    from workers.engines.models import PROFILES

    response = client.get("/api/openai/v1/models", **auth)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["whisper-1", *PROFILES]
    assert all(m["object"] == "model" and m["owned_by"] == "lexiscore" for m in body["data"])


def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_openais_404(client, auth):
    found = client.get("/api/openai/v1/models/tiny.en", **auth)
    missing = client.get("/api/openai/v1/models/gpt-4o-transcribe", **auth)

    assert found.status_code == 200 and found.json()["id"] == "tiny.en"
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "model_not_found"
    assert error_of(missing)["type"] == "invalid_request_error"


def test_models_need_a_key(client):
    response = client.get("/api/openai/v1/models")

    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
