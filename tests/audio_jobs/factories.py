"""Rows of the audio jobs app for tests that do not need real audio (lists, downloads, matrix)."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from unittest import mock

import factory
from django.utils import timezone

from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob, Upload
from tests.factories import OrganisationFactory
from workers.engines.base import TranscriptionOptions, TranscriptionResult

# A realistic stored result: two segments with word timings, as a worker writes it.
SEGMENTS = [
    {
        "id": 0,
        "seek": 0,
        "start": 0.52,
        "end": 3.1,
        "text": " The quarterly report is ready.",
        "tokens": [50364, 440, 38633, 2275, 307, 1919, 13],
        "temperature": 0.0,
        "avg_logprob": -0.21,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
        "words": [
            {"start": 0.52, "end": 0.7, "word": " The", "probability": 0.98},
            {"start": 0.7, "end": 1.32, "word": " quarterly", "probability": 0.95},
            {"start": 1.32, "end": 1.8, "word": " report", "probability": 0.97},
            {"start": 1.8, "end": 2.1, "word": " is", "probability": 0.99},
            {"start": 2.1, "end": 3.1, "word": " ready.", "probability": 0.96},
        ],
    },
    {
        "id": 1,
        "seek": 0,
        "start": 3604.25,
        "end": 3606.5,
        "text": " Revenue grew <fast> & well.",
        "tokens": [50364, 1300, 13],
        "temperature": 0.0,
        "avg_logprob": -0.3,
        "compression_ratio": 1.2,
        "no_speech_prob": 0.02,
        "words": [
            {"start": 3604.25, "end": 3604.9, "word": " Revenue", "probability": 0.91},
            {"start": 3604.9, "end": 3605.3, "word": " grew", "probability": 0.93},
            {"start": 3605.3, "end": 3605.8, "word": " <fast>", "probability": 0.5},
            {"start": 3605.8, "end": 3606.0, "word": " &", "probability": 0.6},
            {"start": 3606.0, "end": 3606.5, "word": " well.", "probability": 0.9},
        ],
    },
]
TEXT = "The quarterly report is ready. Revenue grew <fast> & well."


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TranscriptionJob
        skip_postgeneration_save = True

    id = factory.LazyFunction(uuid.uuid4)
    organisation = factory.SubFactory(OrganisationFactory)
    status = JobStatus.QUEUED
    queued_at = factory.LazyFunction(timezone.now)
    original_filename = "meeting.mp3"
    audio_key = factory.LazyAttribute(lambda job: f"org/{job.organisation.pk}/audio/{job.id}.mp3")
    container = "mp3"
    codec = "mp3"
    size_bytes = 48_000
    duration_seconds = 12.0
    audio_validated = True

    @factory.post_generation
    def usage(job, create, extracted, **kwargs):
        """The quota usage the services record with a job's duration (`usage=False`: none)."""
        if create and extracted is not False and job.duration_seconds is not None:
            from apps.audio_jobs.services import usage_record

            usage_record(job=job)


class CompletedJobFactory(JobFactory):
    status = JobStatus.COMPLETED
    language = "en"
    progress = 100.0
    attempts = 1
    started_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyFunction(timezone.now)
    model_used = "tiny.en"
    engine = "faster-whisper"


class TranscriptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Transcript

    job = factory.SubFactory(CompletedJobFactory)
    text = TEXT
    language = "en"
    language_probability = 1.0
    duration = 3607.0
    segments = factory.LazyFunction(lambda: [dict(s) for s in SEGMENTS])
    word_count = 10


class UploadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Upload

    id = factory.LazyFunction(uuid.uuid4)
    organisation = factory.SubFactory(OrganisationFactory)
    key = factory.LazyAttribute(lambda upload: f"org/{upload.organisation.pk}/uploads/{upload.id}")
    filename = "meeting.mp3"
    max_size = 10_000_000
    expires_at = factory.LazyFunction(lambda: timezone.now() + timezone.timedelta(minutes=15))


def timed_result(
    *texts: str,
    profile: str = "tiny.en",
    compression_ratio: float = 1.3,
    probability: float = 0.95,
):
    """An engine's result with one segment per text, its words timed 0.3 s apart (a stand-in
    for a model: the worker's handling of a result is what is tested). `compression_ratio`
    applies to every segment but the first (a loop after a clean sentence)."""
    from workers.engines.base import Segment, TranscriptionResult, Word

    segments, clock = [], 0.0
    for index, text in enumerate(texts):
        words = []
        for token in text.split():
            words.append(Word(clock, clock + 0.25, f" {token}", probability))
            clock += 0.3
        segments.append(
            Segment(
                id=index,
                start=words[0].start,
                end=words[-1].end,
                text="".join(w.word for w in words),
                avg_logprob=-0.2,
                no_speech_prob=0.01,
                words=words,
                tokens=[1, 2, 3],
                compression_ratio=compression_ratio if index else 1.3,
            )
        )
    return TranscriptionResult(
        text=" ".join(texts),
        language="en",
        language_probability=0.99,
        duration=clock + 0.5,
        segments=segments,
        engine_info={"engine": "faster-whisper", "model_profile": profile, "vad": False},
    )


@contextmanager
def engine(replacement):
    """The worker's engine replaced (its options still computed by `_engine_for`), webhooks and
    emails not sent."""
    with (
        mock.patch.object(processing, "engine_from_settings", return_value=replacement),
        mock.patch("workers.webhooks.deliver.apply_async"),
        mock.patch("workers.emails.send_email.apply_async"),
    ):
        yield replacement


class FixedEngine:
    """An engine that answers `result` at once, and records the options it was asked with."""

    def __init__(self, result: TranscriptionResult):
        self.result = result
        self.options: TranscriptionOptions | None = None

    def transcribe(self, path, options, *, progress_callback=None, should_cancel=None):
        self.options = options
        return self.result
