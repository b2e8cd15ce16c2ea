"""The quality checks in a job's life: the worker checks every completed transcript, the job
carries the result (detail in full, lists as a count and a line, `?flagged=` to find them), and
the job.completed webhook, the completion email, the transcript report and the metrics say so.

The engine is swapped for one returning a fixed result (the checks themselves, and a real engine
on real speech, are in test_quality.py)."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from unittest import mock

import pytest
from django.core.files.storage import default_storage
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pypdf import PdfReader

from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.core.metrics import TRANSCRIPT_QUALITY_FLAGS, TRANSCRIPTS_CHECKED
from apps.notifications.models import EmailOutbox
from apps.reports import services as report_services
from apps.webhooks.models import WebhookDelivery
from tests.audio_jobs.factories import FixedEngine
from tests.factories import bearer, member
from tests.notify_support import completed_job, processing_job, subscribed_owner
from workers.engines.base import Segment, TranscriptionOptions, TranscriptionResult, Word

pytestmark = pytest.mark.django_db(transaction=True)


def words_of(text: str, start: float, step: float = 0.3, probability: float = 0.95) -> list[Word]:
    return [
        Word(start + i * step, start + i * step + step * 0.8, f" {w}", probability)
        for i, w in enumerate(text.split())
    ]


def segment(index: int, text: str, start: float, end: float, **fields) -> Segment:
    return Segment(
        id=index,
        start=start,
        end=end,
        text=f" {text}",
        avg_logprob=fields.pop("avg_logprob", -0.2),
        no_speech_prob=fields.pop("no_speech_prob", 0.01),
        words=words_of(text, start),
        tokens=[1, 2, 3],
        compression_ratio=fields.pop("compression_ratio", 1.3),
    )


def clean_result() -> TranscriptionResult:
    segments = [
        segment(0, "The quarterly figures were better than we expected.", 0.0, 3.0),
        segment(1, "Sales grew in every region except the north.", 3.2, 6.0),
    ]
    return TranscriptionResult(
        text=" ".join(s.text.strip() for s in segments),
        language="en",
        language_probability=0.99,
        duration=6.5,
        segments=segments,
        engine_info={"engine": "faster-whisper", "model_profile": "tiny.en", "vad": False},
    )


def looping_result() -> TranscriptionResult:
    loop = " ".join(["thank you"] * 12)
    segments = [
        segment(0, "The quarterly figures were better than we expected.", 0.0, 3.0),
        segment(1, loop, 3.0, 10.0, compression_ratio=6.0),
    ]
    return TranscriptionResult(
        text=" ".join(s.text.strip() for s in segments),
        language="en",
        language_probability=0.99,
        duration=10.5,
        segments=segments,
        engine_info={"engine": "faster-whisper", "model_profile": "tiny.en", "vad": False},
    )


def run_with(job: TranscriptionJob, result: TranscriptionResult) -> str:
    """The worker's run of `job` with an engine answering `result` (no audio, no model)."""

    @contextmanager
    def local_copy(key):
        yield "/dev/null"

    with (
        mock.patch.object(processing.storage, "local_copy", local_copy),
        mock.patch.object(
            processing,
            "_engine_for",
            return_value=(FixedEngine(result), TranscriptionOptions(language="en")),
        ),
        mock.patch("workers.webhooks.deliver.apply_async"),
        mock.patch("workers.emails.send_email.apply_async"),
    ):
        return processing._run(job)


@pytest.fixture
def owner():
    return subscribed_owner()


def finished(owner, result: TranscriptionResult, **fields) -> TranscriptionJob:
    job = processing_job(owner, audio_validated=True, language="en", **fields)
    assert run_with(job, result) == "completed"
    job.refresh_from_db()
    return job


def test_a_looping_transcript_completes_with_its_loop_flagged(owner):
    job = finished(owner, looping_result())

    assert job.status == JobStatus.COMPLETED
    assert job.quality_warnings >= 1
    codes = [flag["code"] for flag in job.quality["flags"]]
    assert "repetition_loop" in codes
    loop = next(flag for flag in job.quality["flags"] if flag["code"] == "repetition_loop")
    assert loop["spans"][0]["phrase"] == "thank you"
    assert loop["spans"][0]["segment_ids"] == [1]
    assert job.quality["metrics"]["word_count"] == 8 + 24


def test_a_clean_transcript_is_checked_with_no_warning(owner):
    job = finished(owner, clean_result())

    assert job.quality_warnings == 0
    assert job.quality["flags"] == []
    assert job.quality["metrics"]["word_count"] == 16


def test_a_failure_inside_the_checks_never_fails_the_job(owner):
    with mock.patch("apps.audio_jobs.quality._quality", side_effect=RuntimeError("bug")):
        job = finished(owner, looping_result())

    assert job.status == JobStatus.COMPLETED
    assert job.quality == {"version": 1, "flags": [], "metrics": {}, "error": "analysis_failed"}
    assert job.quality_warnings is None  # never listed as checked and clean
    assert job.transcript.text.startswith("The quarterly figures")


def test_the_job_detail_carries_every_flag_and_the_list_a_count_and_a_line(owner, client):
    job = finished(owner, looping_result())
    auth = bearer(owner.user, owner.organisation)

    detail = client.get(f"/api/v1/jobs/{job.pk}", **auth).json()
    page = client.get("/api/v1/jobs", **auth).json()

    assert detail["quality"] == job.quality
    assert detail["quality_warnings"] == job.quality_warnings
    assert detail["quality_summary"].startswith(f"{job.quality_warnings} warning")
    assert "repetition loop" in detail["quality_summary"]
    listed = page["results"][0]
    assert listed["id"] == str(job.pk)
    assert "quality" not in listed
    assert (listed["quality_warnings"], listed["quality_summary"]) == (
        detail["quality_warnings"],
        detail["quality_summary"],
    )


def test_a_job_not_checked_says_null_not_zero(owner, client):
    job = processing_job(owner)
    auth = bearer(owner.user, owner.organisation)

    detail = client.get(f"/api/v1/jobs/{job.pk}", **auth).json()

    assert (detail["quality"], detail["quality_warnings"], detail["quality_summary"]) == (
        None,
        None,
        None,
    )


def test_flagged_lists_only_jobs_with_warnings_and_false_only_checked_clean_ones(owner, client):
    looping = finished(owner, looping_result())
    clean = finished(owner, clean_result())
    unchecked = processing_job(owner)
    other = subscribed_owner("other@example.com")
    finished(other, looping_result())  # another organisation's flagged job
    auth = bearer(owner.user, owner.organisation)

    def ids(query: str) -> list[str]:
        response = client.get(f"/api/v1/jobs{query}", **auth)
        assert response.status_code == 200
        return [row["id"] for row in response.json()["results"]]

    assert ids("?flagged=true") == [str(looping.pk)]
    assert ids("?flagged=false") == [str(clean.pk)]
    assert set(ids("")) == {str(looping.pk), str(clean.pk), str(unchecked.pk)}


def test_flagged_must_be_a_boolean(owner, client):
    response = client.get("/api/v1/jobs?flagged=perhaps", **bearer(owner.user, owner.organisation))

    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    assert "flagged" in json.dumps(body["error"]["details"])


def test_the_completed_webhook_names_the_flags(owner):
    job = finished(owner, looping_result())

    payload = WebhookDelivery.objects.get(event_type="job.completed").payload

    assert payload["data"]["job_id"] == str(job.pk)
    assert payload["data"]["quality_warnings"] == job.quality_warnings
    assert "repetition_loop" in payload["data"]["quality_flags"]


def test_the_completion_email_mentions_warnings_only_when_there_are_some(owner):
    flagged = finished(owner, looping_result())
    clean = finished(owner, clean_result())

    emails = {e.dedupe_key: e for e in EmailOutbox.objects.all()}

    flagged_context = emails[f"job:{flagged.pk}:completed"].context
    assert flagged_context["quality_summary"].startswith(f"{flagged.quality_warnings} warning")
    assert emails[f"job:{clean.pk}:completed"].context["quality_summary"] == ""


def test_the_completion_email_renders_the_summary(owner, mailoutbox):
    from workers.emails import send_email

    job = finished(owner, looping_result())
    email = EmailOutbox.objects.get(dedupe_key=f"job:{job.pk}:completed")

    send_email(outbox_id=str(email.pk))

    assert len(mailoutbox) == 1
    assert "Automatic checks: " in mailoutbox[0].body
    assert "repetition loop" in mailoutbox[0].body


def test_the_metrics_count_checked_transcripts_and_their_flags(owner):
    checked = TRANSCRIPTS_CHECKED.labels("tiny.en")._value.get()
    loops = TRANSCRIPT_QUALITY_FLAGS.labels("tiny.en", "repetition_loop", "warning")._value.get()

    finished(owner, looping_result(), model_profile="tiny.en")

    assert TRANSCRIPTS_CHECKED.labels("tiny.en")._value.get() == checked + 1
    assert (
        TRANSCRIPT_QUALITY_FLAGS.labels("tiny.en", "repetition_loop", "warning")._value.get()
        == loops + 1
    )


def transcript_report(membership, job: TranscriptionJob, fmt: str) -> bytes:
    """The content of a transcript report of `job` in `fmt`, built at once."""
    report = report_services.report_request(
        organisation=membership.organisation,
        user=membership.user,
        kind="transcript",
        format=fmt,
        job_id=job.pk,
    )
    report_services.report_generate(report_id=str(report.pk))
    report.refresh_from_db()
    assert report.status == "ready"
    with default_storage.open(report.file_key, "rb") as handle:
        return handle.read()


def test_the_transcript_report_shows_the_checks_and_the_revision(owner, media_root):
    job = finished(owner, looping_result())

    pdf = transcript_report(owner, job, "pdf")
    body = json.loads(transcript_report(owner, job, "json"))

    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "Automatic quality checks" in text
    assert "repetition_loop" in text
    assert "as transcribed by the model" in text
    assert body["metadata"]["transcript_revision"] == 0
    assert body["quality"]["summary"].startswith(f"{job.quality_warnings} warning")
    assert [f["code"] for f in body["quality"]["flags"]] == [
        f["code"] for f in job.quality["flags"]
    ]


def test_a_report_of_a_job_completed_before_the_checks_has_no_quality_section(media_root):
    viewer = member()
    job = completed_job(viewer.organisation, viewer.user)

    body = json.loads(transcript_report(viewer, job, "json"))

    assert body["metadata"]["job_id"] == str(job.pk)
    assert body["quality"] is None


@pytest.mark.parametrize(
    "stored",
    [
        {"flags": 5},
        {"flags": [{"code": "low_confidence", "spans": 3, "span_count": "x"}]},
        {"flags": ["x", None], "metrics": []},
    ],
)
def test_a_report_reads_malformed_stored_checks_without_failing(stored):
    from apps.reports.rendering import _quality_data, _quality_pdf

    data = _quality_data(stored)

    assert isinstance(data["summary"], str)
    assert all(flag["spans"] == [] for flag in data["flags"])
    assert _quality_pdf(data)["summary"] == data["summary"]


def test_job_lists_do_not_load_the_full_checks(owner, client, settings):
    """A list shows the stored count and line; the checks in full (up to ~40 KB a job) are
    read by the job's detail only."""
    settings.API_READ_CACHE_SECONDS = 0
    job = finished(owner, looping_result())
    auth = bearer(owner.user, owner.organisation)

    with CaptureQueriesContext(connection) as queries:
        page = client.get("/api/v1/jobs", **auth).json()

    listed = next(row for row in page["results"] if row["id"] == str(job.pk))
    assert listed["quality_summary"] == job.quality_summary
    table = '"audio_jobs_transcriptionjob"'
    selects = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith(f"SELECT {table}.")
    ]
    assert selects
    assert all(f'{table}."quality",' not in sql for sql in selects)
    assert all(f'{table}."quality_summary"' in sql for sql in selects)


def test_a_list_page_cached_before_the_upgrade_is_not_served(owner, client, settings):
    """The previous release cached pages under the bare URL, ignoring `flagged` (unknown to
    it): those entries must not answer this release's requests."""
    from apps.audio_jobs.models import READ_CACHE

    settings.API_READ_CACHE_SECONDS = 300
    clean = finished(owner, clean_result())
    auth = bearer(owner.user, owner.organisation)
    url = "http://testserver/api/v1/jobs?flagged=true"
    stale = {"count": 1, "next": None, "previous": None, "results": [{"id": str(clean.pk)}]}
    READ_CACHE.get_or_load(owner.organisation.id, url, lambda: stale)

    page = client.get("/api/v1/jobs?flagged=true", **auth).json()

    assert page["results"] == []
