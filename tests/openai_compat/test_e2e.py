"""The official OpenAI SDK against a live server, with a real Celery worker running the real
tiny.en model on generated speech: the path an OpenAI client takes, end to end."""

from __future__ import annotations

import openai
import pytest
from django.db import connection

from apps.accounts.models import Role
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from tests.audio_jobs.test_pipeline import WER_BOUND, wer
from tests.factories import ApiKeyFactory, member
from tests.support.processes import CeleryWorker, RedisServer, app_broker

from .conftest import ENGLISH

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workers")]


@pytest.fixture(scope="module")
def broker():
    server = RedisServer(appendonly=False).start()
    with app_broker(server.url):
        yield server
    server.kill()


@pytest.fixture
def worker(broker, transactional_db):
    process = CeleryWorker(
        broker_url=broker.url,
        database_name=connection.settings_dict["NAME"],
        queues=["transcription.cpu"],
        hostname="openai-compat",
    ).start()
    yield process
    process.kill()


@pytest.fixture
def owner(transactional_db):
    return member(Role.OWNER)


def sdk(live_server, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{live_server.url}/api/openai/v1", api_key=api_key, max_retries=0, timeout=180
    )


def test_the_openai_sdk_transcribes_in_every_format(live_server, owner, worker, clip):
    client = sdk(live_server, ApiKeyFactory(organisation=owner.organisation).raw_key)

    def create(**options):
        with clip.open("rb") as audio:
            return client.audio.transcriptions.create(
                model="whisper-1", file=audio, language="en", **options
            )

    as_json = create()
    as_text = create(response_format="text")
    as_srt = create(response_format="srt")
    as_vtt = create(response_format="vtt")
    verbose = create(response_format="verbose_json", timestamp_granularities=["word", "segment"])

    assert wer(ENGLISH, as_json.text) <= WER_BOUND, as_json.text
    assert isinstance(as_text, str) and wer(ENGLISH, as_text) <= WER_BOUND, as_text
    assert as_srt.startswith("1\n00:00:0") and " --> " in as_srt
    assert as_vtt.startswith("WEBVTT\n\n00:00:0")
    assert verbose.language == "english"  # OpenAI names it
    assert verbose.duration > 2
    assert wer(ENGLISH, verbose.text) <= WER_BOUND
    assert verbose.segments and verbose.segments[0].start >= 0
    starts = [w.start for w in verbose.words]
    assert len(starts) >= 8 and starts == sorted(starts)
    # Ordinary jobs of the organisation, each completed once, by tiny.en.
    jobs = TranscriptionJob.objects.filter(organisation=owner.organisation)
    assert [(j.status, j.model_used) for j in jobs] == [(JobStatus.COMPLETED, "tiny.en")] * 5


def test_the_openai_sdk_reads_the_errors(live_server, owner, clip):
    good = sdk(live_server, ApiKeyFactory(organisation=owner.organisation).raw_key)
    wrong = sdk(live_server, "lxk_0123456789ab_" + "A" * 43)

    with clip.open("rb") as audio, pytest.raises(openai.AuthenticationError) as denied:
        wrong.audio.transcriptions.create(model="whisper-1", file=audio)
    with clip.open("rb") as audio, pytest.raises(openai.BadRequestError) as refused:
        good.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio)

    assert denied.value.status_code == 401
    assert refused.value.status_code == 400
    assert refused.value.param == "model"
    assert refused.value.code == "validation_error"
    assert refused.value.body["request_id"] == refused.value.response.headers["X-Request-ID"]
    assert TranscriptionJob.objects.count() == 0


def test_the_openai_sdk_lists_and_retrieves_models(live_server, owner):
    client = sdk(live_server, ApiKeyFactory(organisation=owner.organisation).raw_key)

    listed = [model.id for model in client.models.list()]
    retrieved = client.models.retrieve("tiny.en")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-transcribe")

    assert listed[0] == "whisper-1" and "tiny.en" in listed and "base" in listed
    assert retrieved.id == "tiny.en" and retrieved.owned_by == "lexiscore"
