"""`quality_rerun`: a transcript the quality checks warn about is made again with the next larger
model, and the one with fewer warnings is kept. Engines stand in per model profile (the checks
and the models themselves are tested in test_quality.py and tests/engines)."""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from apps.accounts.models import Role
from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob
from apps.core.metrics import QUALITY_RERUNS
from tests.audio_jobs.factories import timed_result
from tests.factories import bearer, member
from tests.notify_support import processing_job
from workers.engines.errors import EngineError, TranscriptionCancelled
from workers.engines.models import larger_profile

pytestmark = pytest.mark.django_db(transaction=True)


CLEAN = ("The quarterly figures were better than we expected.", "Sales grew in every region.")
LOOP = ("The quarterly figures were better than we expected.", " ".join(["thank you"] * 12))


class Engine:
    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = 0

    def transcribe(self, path, options, *, progress_callback=None, should_cancel=None):
        self.calls += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        if progress_callback is not None:
            progress_callback(1.0, 2.0)
        return self.outcome


def looping(profile: str, **fields) -> Engine:
    """An engine answering a clean sentence and then a loop (two warnings)."""
    return Engine(timed_result(*LOOP, profile=profile, compression_ratio=6.0, **fields))


@contextmanager
def engines(**by_profile: Engine):
    @contextmanager
    def local_copy(key):
        yield "/dev/null"

    with (
        mock.patch.object(processing.storage, "local_copy", local_copy),
        mock.patch.object(
            processing,
            "engine_from_settings",
            side_effect=lambda name, profile: by_profile[profile.replace(".", "_")],
        ),
        mock.patch("workers.webhooks.deliver.apply_async"),
        mock.patch("workers.emails.send_email.apply_async"),
    ):
        yield


@pytest.fixture
def owner():
    return member(Role.OWNER)


def run(owner, *, rerun: bool = True, language: str = "en", **fields) -> TranscriptionJob:
    job = processing_job(
        owner, audio_validated=True, language=language, quality_rerun=rerun, **fields
    )
    assert processing._run(job) == "completed"
    job.refresh_from_db()
    return job


def test_a_looping_transcript_is_made_again_with_the_larger_model_and_the_better_one_kept(owner):
    tiny, base = (
        looping("tiny.en"),
        Engine(timed_result(*CLEAN, profile="base")),
    )
    kept_before = QUALITY_RERUNS.labels("tiny.en", "base", "rerun")._value.get()

    with engines(tiny_en=tiny, base=base):
        job = run(owner)

    assert (tiny.calls, base.calls) == (1, 1)
    assert job.model_used == "base" and job.quality_warnings == 0
    assert job.quality["rerun"] == {
        "from_model": "tiny.en",
        "warnings_before": 2,  # repetition_loop, suspected_hallucination
        "to_model": "base",
        "warnings_after": 0,
        "kept": "rerun",
    }
    assert Transcript.objects.get(job=job).text.endswith("Sales grew in every region.")
    assert job.progress == 100.0
    assert QUALITY_RERUNS.labels("tiny.en", "base", "rerun")._value.get() - kept_before == 1


def test_a_worse_second_transcript_is_dropped(owner):
    tiny = looping("tiny.en")
    base = looping("base", probability=0.2)  # + low_confidence

    with engines(tiny_en=tiny, base=base):
        job = run(owner)

    assert job.model_used == "tiny.en"
    assert job.quality["rerun"]["kept"] == "original"
    assert job.quality["rerun"]["warnings_after"] > job.quality["rerun"]["warnings_before"]


def test_the_largest_model_has_nothing_to_rerun_with(owner):
    base = looping("base")

    with engines(base=base):
        job = run(owner, language="fr")

    assert base.calls == 1
    assert job.quality["rerun"] == {
        "from_model": "base",
        "warnings_before": 2,
        "skipped": "no_larger_model",
    }


def test_a_second_pass_that_fails_keeps_the_first_transcript(owner):
    tiny = looping("tiny.en")
    broken = Engine(EngineError("The model could not be loaded."))

    with engines(tiny_en=tiny, base=broken):
        job = run(owner)

    assert job.status == JobStatus.COMPLETED and job.model_used == "tiny.en"
    assert job.quality["rerun"]["kept"] == "original"
    assert job.quality["rerun"]["error"] == EngineError.code


def test_without_the_option_or_a_warning_there_is_one_pass(owner):
    flagged, clean = looping("tiny.en"), Engine(None)
    with engines(tiny_en=flagged, base=clean):
        job = run(owner, rerun=False)
    assert (flagged.calls, clean.calls) == (1, 0) and "rerun" not in job.quality

    tidy = Engine(timed_result(*CLEAN, profile="tiny.en"))
    with engines(tiny_en=tidy, base=clean):
        job = run(owner)
    assert (tidy.calls, clean.calls) == (1, 0) and "rerun" not in job.quality


def test_the_kept_second_transcript_is_redacted_too(owner):
    tiny = looping("tiny.en")
    base = Engine(timed_result("Call me on 555-123-4567 tomorrow.", "Sales grew.", profile="base"))

    with engines(tiny_en=tiny, base=base):
        job = run(owner, redact_pii=["phone_number"])

    assert job.quality["rerun"]["kept"] == "rerun"
    assert "555" not in Transcript.objects.get(job=job).text
    assert job.redaction["entities"] == {"phone_number": 1}


def test_the_option_is_accepted_and_shown(client, owner, speech):
    clip = speech.say("Hello there.", fmt="mp3")
    with mock.patch("workers.transcription.transcribe_job.apply_async"), clip.open("rb") as f:
        response = client.post(
            "/api/v1/jobs",
            {"file": f, "quality_rerun": "true"},
            **bearer(owner.user, owner.organisation),
        )

    assert response.status_code == 201, response.content
    assert response.json()["quality_rerun"] is True


@pytest.mark.parametrize(
    ("profile", "language", "expected"),
    [("tiny.en", "en", "base"), ("tiny.en", None, "base"), ("base", "en", None), ("x", "en", None)],
)
def test_the_next_larger_model(profile, language, expected):
    assert larger_profile(profile, language) == expected


def test_a_job_that_may_run_twice_gets_twice_the_time(settings, owner):
    from apps.audio_jobs.services import job_passes, time_limits

    settings.CELERY_MAX_TASK_TIME_LIMIT = 10**6
    once = processing_job(owner, language="en")
    twice = processing_job(owner, language="en", quality_rerun=True)
    largest = processing_job(owner, language="fr", quality_rerun=True)  # base: nothing larger

    assert [job_passes(j) for j in (once, twice, largest)] == [1, 2, 1]
    soft_once, _ = time_limits(3600.0, passes=1)
    soft_twice, _ = time_limits(3600.0, passes=2)
    assert soft_twice == 2 * soft_once


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("CUDA out of memory"), MemoryError(), SoftTimeLimitExceeded()],
    ids=["runtime", "memory", "soft-limit"],
)
def test_any_failure_of_the_second_pass_keeps_the_first_transcript(owner, failure):
    tiny = looping("tiny.en")

    with engines(tiny_en=tiny, base=Engine(failure)):
        job = run(owner)

    assert job.status == JobStatus.COMPLETED and job.model_used == "tiny.en"
    assert job.quality["rerun"]["kept"] == "original" and job.quality["rerun"]["error"]


def test_the_second_pass_stops_before_the_jobs_deadline(owner):
    """Its own cutoff, a margin before the job's: the first transcript is stored in time."""
    import time

    class Slow(Engine):
        def transcribe(self, path, options, *, progress_callback=None, should_cancel=None):
            self.calls += 1
            while True:
                should_cancel()
                time.sleep(0.01)

    tiny, slow = looping("tiny.en"), Slow(None)
    job = processing_job(owner, audio_validated=True, language="en", quality_rerun=True)
    deadline = time.monotonic() + processing.RERUN_MARGIN_SECONDS + 0.5

    with engines(tiny_en=tiny, base=slow):
        assert processing._run(job, deadline=deadline) == "completed"

    job.refresh_from_db()
    assert job.quality["rerun"]["error"] == "time_limit"
    assert time.monotonic() < deadline  # stopped at its cutoff, not at the job's deadline


def test_a_cancel_during_the_second_pass_cancels_the_job(owner):
    tiny = looping("tiny.en")
    reruns_failed = QUALITY_RERUNS.labels("tiny.en", "base", "failed")._value.get()

    with engines(tiny_en=tiny, base=Engine(TranscriptionCancelled())):
        job = processing_job(owner, audio_validated=True, language="en", quality_rerun=True)
        assert processing._run(job) == "cancelled"

    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert QUALITY_RERUNS.labels("tiny.en", "base", "failed")._value.get() == reruns_failed


def test_each_pass_is_observed_under_its_own_model(owner):
    from apps.core.metrics import TRANSCRIPTION_WALL_SECONDS

    def wall(model: str) -> float:
        return TRANSCRIPTION_WALL_SECONDS.labels("faster-whisper", model)._value.get()

    before = {model: wall(model) for model in ("tiny.en", "base")}
    tiny, base = (
        looping("tiny.en"),
        Engine(timed_result(*CLEAN, profile="base")),
    )

    with engines(tiny_en=tiny, base=base):
        job = run(owner)

    assert job.model_used == "base"
    assert wall("tiny.en") > before["tiny.en"] and wall("base") > before["base"]
    assert job.engine_settings["engine_seconds"] == pytest.approx(
        wall("base") - before["base"], abs=0.01
    )
