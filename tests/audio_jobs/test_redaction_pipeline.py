"""PII redaction in a job's life: asked for per request or enforced by the organisation, done
by the worker before anything is stored (the transcript, its search vector, the quality flags'
quoted phrases), the stored audio optionally replaced by a copy with the spans silenced, and
said in the job, its webhook and its transcript's words.

The detector itself is tested in test_redaction.py; here the real tiny.en model transcribes
real (espeak) speech, and a fixed engine stands in where only the worker's handling is tested.
"""

from __future__ import annotations

import io
import math
import re
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs import processing, services
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob
from apps.audit.models import AuditAction, AuditEvent
from apps.core.models import PendingDeletion
from apps.webhooks.models import WebhookDelivery
from tests.audio_jobs.conftest import media_files
from tests.audio_jobs.factories import (
    CompletedJobFactory,
    FixedEngine,
    TranscriptFactory,
    engine,
    timed_result,
)
from tests.factories import bearer, member
from tests.notify_support import subscribed_owner

JOBS = "/api/v1/jobs"
SPOKEN = "Please call me on 555 123 4567 tomorrow."
DIGITS = re.compile(r"\d{3}")


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def upload(client, headers, path: Path, **fields):
    with path.open("rb") as handle:
        return client.post(JOBS, {"file": handle, **fields}, **headers)


def rms_db(path: Path, start: float, end: float) -> float:
    """The RMS level (dB) of `path` between two times, decoded by ffmpeg (-inf: digital
    silence)."""
    completed = subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-i", str(path), "-ss", f"{start:.3f}", "-to", f"{end:.3f}"),
            *("-ac", "1", "-ar", "16000", "-f", "s16le", "-"),
        ],
        capture_output=True,
        check=True,
    )
    samples = memoryview(completed.stdout).cast("h")
    assert len(samples) > 0
    power = sum(s * s for s in samples) / len(samples)
    return float("-inf") if power == 0 else 10 * math.log10(power / 32768**2)


def created_job(client, headers, clip: Path, **fields) -> TranscriptionJob:
    response = upload(client, headers, clip, language="en", **fields)
    assert response.status_code == 201, response.content
    return TranscriptionJob.objects.get(pk=response.json()["id"])


def silencing_job(client, clip: Path, **fields) -> TranscriptionJob:
    """A new owner's job asking for phone numbers redacted and silenced in its audio."""
    owner = member(Role.OWNER)
    return created_job(
        client,
        bearer(owner.user, owner.organisation),
        clip,
        redact_pii="phone_number",
        redact_pii_audio="true",
        **fields,
    )


@pytest.fixture(scope="module")
def phone_clip(speech) -> Path:
    return speech.say(SPOKEN, fmt="mp3", lead_silence=0.5)


# ---- the real model on real speech --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_spoken_phone_number_is_redacted_from_the_transcript_and_silenced_in_the_audio(
    client, media_root, phone_clip, tiny_engine
):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    job = created_job(
        client,
        headers,
        phone_clip,
        redact_pii="phone_number,email_address",
        redact_pii_audio="true",
        word_timestamps="false",
    )
    original_key = job.audio_key
    assert job.redact_pii == ["email_address", "phone_number"]

    with engine(tiny_engine):
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    transcript = Transcript.objects.get(job=job)
    assert "[PHONE_NUMBER]" in transcript.text, transcript.text
    assert not DIGITS.search(transcript.text), transcript.text
    assert "tomorrow" in transcript.text.lower()
    assert job.redaction["entities"] == {"phone_number": 1}
    assert job.redaction["audio"] == "silenced"
    # Words were computed to time the silence, and not kept: the job asked for none.
    assert all(segment["words"] == [] for segment in transcript.segments)
    assert all(segment["tokens"] == [] for segment in transcript.segments if "[" in segment["text"])
    # The stored audio is the silenced copy; the original is gone.
    assert job.audio_key != original_key and job.audio_key.endswith(".flac")
    assert job.container == "flac" and job.size_bytes == default_storage.size(job.audio_key)
    assert not default_storage.exists(original_key)
    assert media_files(media_root) == [job.audio_key]
    assert not PendingDeletion.objects.exists()
    # Where the number was said is silent now; the words before it are not.
    stored = Path(default_storage.path(job.audio_key))
    assert job.redaction["audio_seconds_silenced"] > 1.0
    silenced = _silenced_interval(stored)
    assert silenced is not None and silenced[1] - silenced[0] >= 1.0
    assert rms_db(stored, 0.5, silenced[0] - 0.3) > -40
    # Search sees only the redacted text.
    search = client.get(JOBS, {"q": "555"}, **headers).json()
    assert search["count"] == 0
    assert client.get(JOBS, {"q": "tomorrow"}, **headers).json()["count"] == 1


def _silenced_interval(path: Path) -> tuple[float, float] | None:
    """The longest run of digital silence in `path` (seconds), found with ffmpeg."""
    completed = subprocess.run(
        [
            *("ffmpeg", "-v", "info", "-i", str(path), "-af", "silencedetect=n=-90dB:d=0.3"),
            *("-f", "null", "-"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    starts = [float(x) for x in re.findall(r"silence_start: ([\d.]+)", completed.stderr)]
    ends = [float(x) for x in re.findall(r"silence_end: ([\d.]+)", completed.stderr)]
    runs = list(zip(starts, ends, strict=False))
    return max(runs, key=lambda run: run[1] - run[0]) if runs else None


# ---- the worker's handling ----------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_organisation_policy_applies_to_every_job_and_nothing_unredacted_is_stored(
    client, media_root, phone_clip
):
    from apps.core.metrics import PII_REDACTIONS

    phones_before = PII_REDACTIONS.labels("phone_number")._value.get()
    owner = subscribed_owner()
    owner.organisation.redact_pii = ["email_address", "phone_number"]
    owner.organisation.save()
    headers = bearer(owner.user, owner.organisation)
    job = created_job(client, headers, phone_clip)  # the request asks for nothing
    assert job.redact_pii == ["email_address", "phone_number"] and not job.redact_pii_audio
    loop = " ".join(["call 555-123-4567"] * 8)
    result = timed_result("Write to jane.doe@example.com today.", loop)

    with engine(FixedEngine(result)):
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    transcript = Transcript.objects.get(job=job)
    stored = repr(
        (transcript.text, transcript.segments, job.quality, job.quality_summary, job.redaction)
    )
    assert "555" not in stored and "jane" not in stored, stored
    assert "[EMAIL_ADDRESS]" in transcript.text
    assert job.redaction == {
        "entities": {"email_address": 1, "phone_number": 8},
        "audio": "not_asked",
    }
    assert PII_REDACTIONS.labels("phone_number")._value.get() - phones_before == 8
    loop_flag = next(f for f in job.quality["flags"] if f["code"] == "repetition_loop")
    assert loop_flag["spans"][0]["phrase"] == "call phone_number"  # normalised words
    # The audio was not asked to be silenced: it stays as uploaded.
    assert job.audio_key.endswith(".mp3") and default_storage.exists(job.audio_key)
    # The job.completed webhook says what was redacted, never the values.
    delivery = WebhookDelivery.objects.get(event_type="job.completed")
    assert delivery.payload["data"]["pii_redacted"] == {"email_address": 1, "phone_number": 8}
    body = client.get(f"{JOBS}/{job.pk}/transcript", {"format": "json"}, **headers).json()
    assert [w["word"] for w in body["words"][:3]] == ["Write", "to", "[EMAIL_ADDRESS]"]
    stored_words = [w for s in transcript.segments for w in s["words"] if w.get("redacted")]
    assert [w["redacted"] for w in stored_words[:2]] == ["email_address", "phone_number"]
    srt = client.get(f"{JOBS}/{job.pk}/transcript", {"format": "srt"}, **headers)
    assert b"[PHONE_NUMBER]" in srt.content and b"555" not in srt.content


@pytest.mark.django_db(transaction=True)
def test_a_job_deleted_while_its_audio_was_silenced_leaves_no_file(client, media_root, phone_clip):
    job = silencing_job(client, phone_clip)
    real_complete = processing._complete

    def delete_first(running, *args, **kwargs):
        with transaction.atomic():
            services.job_delete(job=running)
        return real_complete(running, *args, **kwargs)

    with (
        engine(FixedEngine(timed_result("Call 555-123-4567 now."))),
        mock.patch.object(processing, "_complete", delete_first),
    ):
        assert processing._run(job) == "discarded"

    assert not TranscriptionJob.objects.filter(pk=job.pk).exists()
    assert media_files(media_root) == []
    assert not PendingDeletion.objects.filter(key__contains="redacted").exists()


@pytest.mark.django_db(transaction=True)
def test_audio_redaction_that_fails_fails_the_job_and_keeps_the_upload(
    client, media_root, phone_clip
):
    job = silencing_job(client, phone_clip)
    broken = processing.media.CorruptMediaError("The audio could not be re-encoded.")

    with (
        engine(FixedEngine(timed_result("Call 555-123-4567 now."))),
        mock.patch.object(processing.media, "silence_spans", side_effect=broken),
    ):
        assert processing._run(job) == "failed"

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "audio_redaction_failed"
    assert not Transcript.objects.filter(job=job).exists()
    assert media_files(media_root) == [job.audio_key]


@pytest.mark.django_db(transaction=True)
def test_audio_redaction_with_nothing_found_keeps_the_upload(client, media_root, phone_clip):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    job = created_job(
        client, headers, phone_clip, redact_pii="credit_card_number", redact_pii_audio="true"
    )
    with engine(FixedEngine(timed_result("Nothing to hide here."))) as fixed:
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    assert fixed.options is not None and fixed.options.word_timestamps
    assert job.redaction == {"entities": {}, "audio": "nothing_to_silence"}
    assert media_files(media_root) == [job.audio_key]


# ---- the API ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_redaction_options_are_validated(client, media_root, phone_clip):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)

    unknown = assert_error(
        upload(client, headers, phone_clip, redact_pii="phone_number,person_name"),
        400,
        "validation_error",
    )
    assert "redact_pii" in unknown["details"]
    alone = assert_error(
        upload(client, headers, phone_clip, redact_pii_audio="true"), 400, "validation_error"
    )
    assert "redact_pii_audio" in alone["details"]
    assert_error(
        upload(client, headers, phone_clip, redact_pii="phone_number", redact_pii_sub="stars"),
        400,
        "validation_error",
    )
    assert media_files(media_root) == []

    with mock.patch("workers.transcription.transcribe_job.apply_async"):
        repeated = client.post(
            JOBS,
            {
                "file": phone_clip.open("rb"),
                "redact_pii": ["phone_number", "iban", "phone_number"],
                "redact_pii_sub": "hash",
            },
            **headers,
        )
    assert repeated.status_code == 201, repeated.content
    body = repeated.json()
    assert body["redact_pii"] == ["iban", "phone_number"]
    assert body["redact_pii_sub"] == "hash" and body["redaction"] is None
    assert body["redact_pii_audio"] is False


@pytest.mark.django_db
def test_transcribing_again_never_drops_the_sources_redaction(api_client, media_root):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    source = CompletedJobFactory(
        organisation=owner.organisation,
        redact_pii=["phone_number"],
        redact_pii_audio=True,
        redact_pii_sub="hash",
    )
    TranscriptFactory(job=source)
    default_storage.save(source.audio_key, io.BytesIO(b"audio"))

    response = api_client.post(
        f"{JOBS}/{source.pk}/retranscribe",
        {"redact_pii": ["email_address"], "model": "base"},
        format="json",
        **headers,
    )

    assert response.status_code == 201, response.content
    again = TranscriptionJob.objects.get(pk=response.json()["id"])
    assert again.redact_pii == ["email_address", "phone_number"]
    assert again.redact_pii_audio and again.redact_pii_sub == "hash"


@pytest.mark.django_db
def test_admins_set_the_organisation_policy_and_members_cannot(api_client):
    owner = member(Role.OWNER)
    colleague = member(Role.MEMBER, organisation=owner.organisation, email="m@example.com")
    url = f"/api/v1/organisations/{owner.organisation.pk}/"

    refused = api_client.patch(
        url,
        {"redact_pii": ["phone_number"]},
        format="json",
        **bearer(colleague.user, owner.organisation),
    )
    assert refused.status_code == 403
    invalid = api_client.patch(
        url, {"redact_pii": ["names"]}, format="json", **bearer(owner.user, owner.organisation)
    )
    assert_error(invalid, 400, "validation_error")

    response = api_client.patch(
        url,
        {"redact_pii": "phone_number,email_address", "redact_pii_audio": True},
        format="json",
        **bearer(owner.user, owner.organisation),
    )

    assert response.status_code == 200, response.content
    assert response.json()["redact_pii"] == ["email_address", "phone_number"]
    assert response.json()["redact_pii_audio"] is True
    owner.organisation.refresh_from_db()
    assert owner.organisation.redact_pii == ["email_address", "phone_number"]
    event = AuditEvent.objects.get(action=AuditAction.ORGANISATION_UPDATED)
    assert event.metadata["redact_pii"] == [[], ["email_address", "phone_number"]]
    assert event.metadata["redact_pii_audio"] == [False, True]


@pytest.mark.django_db(transaction=True)
def test_hundreds_of_spans_are_all_silenced_and_the_uploads_tags_are_dropped(
    client, media_root, speech, tmp_path, settings
):
    """ffmpeg 5 refuses one expression of more than 100 terms: the spans are chained."""
    settings.PII_AUDIO_PADDING_SECONDS = 0  # 150 separate spans (padded, they would merge)
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    tagged = tmp_path / "tagged.mp3"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-i", str(speech.silence(100.0)), "-c:a", "libmp3lame"),
            *("-metadata", "comment=Call Jane on 555 123 4567", str(tagged)),
        ],
        check=True,
    )
    job = created_job(client, headers, tagged, redact_pii="phone_number", redact_pii_audio="true")
    numbers = [f"Call 555-123-{1000 + i}" for i in range(150)]
    result = timed_result(*numbers)
    assert result.duration < 100

    with engine(FixedEngine(result)):
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    assert job.redaction["entities"] == {"phone_number": 150}
    assert job.redaction["audio"] == "silenced"
    assert job.redaction["audio_seconds_silenced"] == pytest.approx(150 * 0.25, abs=0.01)
    stored = Path(default_storage.path(job.audio_key))
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags", "-of", "json", str(stored)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "555" not in probe.stdout and "Jane" not in probe.stdout


@pytest.mark.django_db(transaction=True)
def test_a_job_held_before_it_completed_keeps_its_upload(client, media_root, phone_clip):
    job = silencing_job(client, phone_clip)
    upload_key = job.audio_key
    TranscriptionJob.objects.filter(pk=job.pk).update(legal_hold_at=timezone.now())

    with engine(FixedEngine(timed_result("Call 555-123-4567 now."))):
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    assert job.audio_key == upload_key
    assert job.redaction == {"entities": {"phone_number": 1}, "audio": "kept_legal_hold"}
    assert "[PHONE_NUMBER]" in Transcript.objects.get(job=job).text
    assert media_files(media_root) == [upload_key]
    assert not PendingDeletion.objects.exists()


@pytest.mark.django_db
def test_audio_alone_follows_the_organisation_policy_and_is_refused_without_one(
    client, api_client, media_root, phone_clip
):
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    source = CompletedJobFactory(organisation=owner.organisation)
    default_storage.save(source.audio_key, io.BytesIO(b"audio"))

    again = api_client.post(
        f"{JOBS}/{source.pk}/retranscribe", {"redact_pii_audio": True}, format="json", **headers
    )
    assert "redact_pii_audio" in assert_error(again, 400, "validation_error")["details"]

    owner.organisation.redact_pii = ["phone_number"]
    owner.organisation.save()
    with mock.patch("workers.transcription.transcribe_job.apply_async"):
        created = upload(client, headers, phone_clip, redact_pii_audio="true")
    assert created.status_code == 201, created.content
    assert created.json()["redact_pii"] == ["phone_number"]
    assert created.json()["redact_pii_audio"] is True


@pytest.mark.django_db
def test_an_oversized_policy_list_is_refused_in_one_short_error(api_client):
    owner = member(Role.OWNER)
    url = f"/api/v1/organisations/{owner.organisation.pk}/"
    headers = bearer(owner.user, owner.organisation)

    huge = api_client.patch(url, {"redact_pii": ["nope"] * 50_000}, format="json", **headers)
    long_one = api_client.patch(url, {"redact_pii": "x" * 100_000}, format="json", **headers)
    audio_alone = api_client.patch(url, {"redact_pii_audio": True}, format="json", **headers)

    for response in (huge, long_one, audio_alone):
        assert_error(response, 400, "validation_error")
        assert len(response.content) < 1000
    owner.organisation.refresh_from_db()
    assert owner.organisation.redact_pii == [] and not owner.organisation.redact_pii_audio


@pytest.mark.django_db
def test_the_admin_form_normalises_and_checks_the_policy():
    from apps.accounts.admin import OrganisationForm

    def form(**data):
        return OrganisationForm(data={"name": "Acme", "plan": "free", **data})

    empty = form(redact_pii="")
    assert empty.is_valid(), empty.errors
    assert empty.cleaned_data["redact_pii"] == []
    doubled = form(redact_pii='["phone_number", "email_address", "phone_number"]')
    assert doubled.is_valid(), doubled.errors
    assert doubled.cleaned_data["redact_pii"] == ["email_address", "phone_number"]
    assert not form(redact_pii='["names"]').is_valid()
    assert not form(redact_pii="{}", redact_pii_audio="on").is_valid()
