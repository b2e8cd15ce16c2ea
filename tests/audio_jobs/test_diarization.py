"""Speaker diarization in a job's life: asked for on upload, done by the worker with the real
tiny.en model on a real two-voice (espeak) conversation, stored on segments and words, named by
members, kept through edits, and never the cause of a lost transcript.

The encoder, features and clustering are tested in tests/engines/test_speakers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from auditlog.models import LogEntry
from django.test import override_settings

from apps.accounts.models import Role
from apps.audio_jobs import events, processing
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob
from apps.audit.models import AuditAction, AuditEvent
from apps.feed.models import FeedEvent
from tests.audio_jobs.factories import FixedEngine, engine, timed_result
from tests.factories import bearer, member
from tests.speech import CONVERSATION

JOBS = "/api/v1/jobs"


def upload(client, headers, path: Path, **fields):
    with path.open("rb") as handle:
        return client.post(JOBS, {"file": handle, "language": "en", **fields}, **headers)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


@pytest.fixture(scope="module")
def conversation(speech) -> Path:
    path, _spans = speech.dialogue(CONVERSATION, fmt="mp3")
    return path


@pytest.fixture
def diarized(client, conversation, tiny_engine):
    """The conversation uploaded with `diarize` by a new owner and processed by the worker with
    tiny.en (words not asked for: they are computed to place the turns, then dropped)."""
    owner = member(Role.OWNER)
    headers = bearer(owner.user, owner.organisation)
    response = upload(client, headers, conversation, diarize="true", word_timestamps="false")
    assert response.status_code == 201, response.content
    job = TranscriptionJob.objects.get(pk=response.json()["id"])
    with engine(tiny_engine):
        assert processing._run(job) == "completed"
    return job.pk, owner, headers


# ---- the real model on real speech --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db
def test_a_two_voice_conversation_is_labelled_turn_by_turn(client, diarized):
    job_id, _owner, headers = diarized

    body = client.get(f"{JOBS}/{job_id}", **headers).json()
    segments = Transcript.objects.get(job_id=job_id).segments

    assert body["diarize"] is True and body["diarization"]["model"].startswith("resemblyzer")
    assert [s["id"] for s in body["diarization"]["speakers"]] == ["SPEAKER_00", "SPEAKER_01"]
    assert all(s["seconds"] > 5 and s["words"] > 20 for s in body["diarization"]["speakers"])
    # Bob opens and speaks the first and third lines; Alice the second and fourth.
    text = {s["speaker"]: [] for s in segments}
    for segment in segments:
        text[segment["speaker"]].append(segment["text"].lower())
    assert "good morning" in " ".join(text["SPEAKER_00"])
    assert "walk us through" in " ".join(text["SPEAKER_00"])
    assert "budget numbers" in " ".join(text["SPEAKER_01"])
    assert "travel budget" in " ".join(text["SPEAKER_01"])
    # Words were computed to place the turns and not kept: the job asked for none.
    assert all(segment["words"] == [] for segment in segments)
    # Webhooks carry each speaker's label and time.
    payload = events._job_data(TranscriptionJob.objects.get(pk=job_id))
    assert [item["id"] for item in payload["speakers"]] == ["SPEAKER_00", "SPEAKER_01"]


@pytest.mark.slow
@pytest.mark.django_db
def test_speakers_are_named_and_every_rendering_follows(client, diarized):
    job_id, _owner, headers = diarized
    url = f"{JOBS}/{job_id}/transcript/speakers"

    feed_events = FeedEvent.objects.filter(subject_id=job_id).count()
    listed = client.get(url, **headers).json()["speakers"]
    assert [(s["id"], s["name"]) for s in listed] == [("SPEAKER_00", None), ("SPEAKER_01", None)]
    renamed = client.patch(
        url, {"names": {"SPEAKER_00": "  Bob\nSmith ", "SPEAKER_01": "Alice"}}, **headers,
        content_type="application/json",
    )  # fmt: skip
    assert renamed.status_code == 200, renamed.content
    assert [s["name"] for s in renamed.json()["speakers"]] == ["Bob Smith", "Alice"]

    txt = client.get(f"{JOBS}/{job_id}/transcript", {"format": "txt"}, **headers)
    assert txt.content.decode().startswith("Bob Smith: ")
    assert "\nAlice: " in txt.content.decode()
    vtt = client.get(f"{JOBS}/{job_id}/transcript", {"format": "vtt"}, **headers).content
    assert b"<v Bob Smith>" in vtt and b"<v Alice>" in vtt
    event = AuditEvent.objects.get(action=AuditAction.TRANSCRIPT_SPEAKERS_RENAMED)
    assert event.metadata["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    # Names are personal data, and audit trails outlive jobs: neither trail holds them.
    assert "Alice" not in str(event.metadata)
    assert not LogEntry.objects.filter(changes_text__contains="Alice").exists()
    assert "Alice" not in str(list(LogEntry.objects.values_list("changes", flat=True)))
    # The live feed is not told the job completed again.
    assert FeedEvent.objects.filter(subject_id=job_id).count() == feed_events

    # null removes a name; the other is kept.
    cleared = client.patch(
        url, {"names": {"SPEAKER_00": None}}, **headers, content_type="application/json"
    ).json()["speakers"]
    assert [s["name"] for s in cleared] == [None, "Alice"]
    txt = client.get(f"{JOBS}/{job_id}/transcript", {"format": "txt"}, **headers)
    assert txt.content.decode().startswith("Speaker 1: ")


@pytest.mark.slow
@pytest.mark.django_db
def test_naming_refuses_unknown_labels_hidden_characters_and_viewers(client, diarized):
    job_id, owner, headers = diarized
    url = f"{JOBS}/{job_id}/transcript/speakers"

    def patch(names, as_headers=headers):
        return client.patch(url, {"names": names}, **as_headers, content_type="application/json")

    error = error_of(patch({"SPEAKER_07": "Eve"}), 400)
    assert error["code"] == "unknown_speaker"
    assert error["details"]["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    assert error_of(patch({"SPEAKER_00": "Bob\u202eevil"}), 400)["code"] == "validation_error"
    assert error_of(patch({"SPEAKER_00": "x" * 81}), 400)["code"] == "validation_error"
    assert error_of(patch({}), 400)["code"] == "validation_error"
    viewer = member(Role.VIEWER, organisation=owner.organisation)
    assert error_of(patch({"SPEAKER_00": "Eve"}, bearer(viewer.user, owner.organisation)), 403)
    # Another organisation cannot see the job at all.
    stranger = member(Role.OWNER)
    outsider = bearer(stranger.user, stranger.organisation)
    assert error_of(patch({"SPEAKER_00": "Eve"}, outsider), 404)["code"] == "job_not_found"


# ---- options ------------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"speakers_expected": "2"}, "speakers_expected"),
        ({"max_speakers": "3"}, "max_speakers"),
        ({"diarize": "true", "speakers_expected": "11"}, "speakers_expected"),
        ({"diarize": "true", "speakers_expected": "0"}, "speakers_expected"),
        ({"diarize": "true", "speakers_expected": "4", "max_speakers": "3"}, "speakers_expected"),
        ({"diarize": "maybe"}, "diarize"),
    ],
)
def test_speaker_options_are_validated(client, auth, speech, fields, field):
    clip = speech.say("Hello there.", fmt="mp3")

    error = error_of(upload(client, auth, clip, **fields), 400)

    assert error["code"] == "validation_error" and field in error["details"]
    assert not TranscriptionJob.objects.exists()


@pytest.mark.django_db
def test_speaker_options_are_stored_and_shown(client, auth, speech):
    clip = speech.say("Hello there.", fmt="mp3")

    body = upload(client, auth, clip, diarize="true", speakers_expected="2", max_speakers="4")

    assert body.status_code == 201, body.content
    shown = body.json()
    assert (shown["diarize"], shown["speakers_expected"], shown["max_speakers"]) == (True, 2, 4)
    assert shown["diarization"] is None and shown["speaker_names"] == {}


@pytest.mark.django_db
def test_naming_a_transcript_without_speakers_says_how_to_get_them(client, auth, owner):
    from tests.audio_jobs.factories import CompletedJobFactory, TranscriptFactory

    job = CompletedJobFactory(organisation=owner.organisation)
    TranscriptFactory(job=job)

    error = error_of(
        client.patch(
            f"{JOBS}/{job.pk}/transcript/speakers",
            {"names": {"SPEAKER_00": "Eve"}},
            **auth,
            content_type="application/json",
        ),
        409,
    )

    assert error["code"] == "no_speakers"
    assert client.get(f"{JOBS}/{job.pk}/transcript/speakers", **auth).json() == {"speakers": []}


# ---- failures never cost the transcript ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_missing_speaker_model_completes_the_job_without_labels(
    client, auth, conversation, tiny_engine, tmp_path
):
    from apps.core.metrics import DIARIZATIONS

    failures = DIARIZATIONS.labels("failed")._value.get()
    job = TranscriptionJob.objects.get(
        pk=upload(client, auth, conversation, diarize="true").json()["id"]
    )

    with override_settings(DIARIZATION_MODEL_PATH=str(tmp_path / "gone.pt")), engine(tiny_engine):
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert job.diarization["error"] == "model_not_found"
    assert "transcript is complete" in job.diarization["message"]
    transcript = Transcript.objects.get(job=job)
    assert "budget" in transcript.text.lower()
    assert not any("speaker" in segment for segment in transcript.segments)
    # Asked-for words are kept; no speaker was put on them.
    assert transcript.segments[0]["words"] and "speaker" not in transcript.segments[0]["words"][0]
    assert DIARIZATIONS.labels("failed")._value.get() == failures + 1
    assert events._job_data(job)["speakers"] is None


@pytest.mark.django_db(transaction=True)
def test_labelling_that_would_run_past_the_jobs_time_keeps_the_transcript(
    client, auth, conversation
):
    from unittest import mock

    job = TranscriptionJob.objects.get(
        pk=upload(client, auth, conversation, diarize="true").json()["id"]
    )
    fixed = FixedEngine(timed_result("Good morning everyone, thank you for joining."))

    # The transcription took all the time there was: labelling must stop, not the job, and
    # without decoding the audio first.
    with (
        mock.patch.object(processing, "_cutoff", return_value=0.0),
        mock.patch("workers.engines.audio.load_audio") as decode,
        engine(fixed),
    ):
        assert processing._run(job) == "completed"

    decode.assert_not_called()

    job.refresh_from_db()
    assert job.diarization["error"] == "time_limit"
    transcript = Transcript.objects.get(job=job)
    assert transcript.text.startswith("Good morning")
    assert not any("speaker" in segment for segment in transcript.segments)


@pytest.mark.django_db(transaction=True)
def test_redacted_words_are_labelled_and_counted_as_stored(client, auth, conversation):
    job = TranscriptionJob.objects.get(
        pk=upload(client, auth, conversation, diarize="true", redact_pii="phone_number").json()[
            "id"
        ]
    )
    fixed = FixedEngine(timed_result("Please call me on 555 123 4567 tomorrow."))

    with engine(fixed):
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    words = Transcript.objects.get(job=job).segments[0]["words"]
    redacted = [w for w in words if w.get("redacted")]
    assert [w["word"].strip() for w in redacted] == ["[PHONE_NUMBER]"]
    assert all(w["speaker"] == "SPEAKER_00" for w in words)
    assert sum(s["words"] for s in job.diarization["speakers"]) == len(words)
    # Speaker labelling's time is not the transcription's.
    assert job.diarization["seconds"] > 0
    assert "diarization" not in job.engine_settings


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_job_without_diarize_has_no_speakers_and_runs_no_encoder(
    client, auth, conversation, tiny_engine
):
    from unittest import mock

    job = TranscriptionJob.objects.get(pk=upload(client, auth, conversation).json()["id"])

    with mock.patch("workers.engines.speakers.load_encoder") as loader, engine(tiny_engine):
        assert processing._run(job) == "completed"

    loader.assert_not_called()
    job.refresh_from_db()
    assert job.diarization is None
    assert not any("speaker" in s for s in Transcript.objects.get(job=job).segments)


# ---- edits keep the labels -----------------------------------------------------------------------
def test_an_edit_keeps_the_speakers_and_labels_new_words_from_their_neighbours():
    from apps.audio_jobs.editing import edited_segment

    segment = {
        "id": 0, "start": 0.0, "end": 3.0, "text": " Hi there. Yes.", "speaker": "SPEAKER_00",
        "words": [
            {"start": 0.0, "end": 0.5, "word": " Hi", "speaker": "SPEAKER_00"},
            {"start": 0.5, "end": 1.0, "word": " there.", "speaker": "SPEAKER_00"},
            {"start": 2.0, "end": 2.5, "word": " Yes.", "speaker": "SPEAKER_01"},
        ],
    }  # fmt: skip

    edited = edited_segment(segment, "Hi there, friend. yes. Indeed")

    assert edited["speaker"] == "SPEAKER_00"
    assert [(w["word"], w["speaker"]) for w in edited["words"]] == [
        (" Hi", "SPEAKER_00"),
        (" there,", "SPEAKER_00"),
        (" friend.", "SPEAKER_00"),
        (" yes.", "SPEAKER_01"),
        (" Indeed", "SPEAKER_01"),
    ]


def test_an_edit_that_removes_one_speakers_words_gives_the_segment_to_the_other():
    from apps.audio_jobs.editing import edited_segment

    segment = {
        "id": 0, "start": 0.0, "end": 3.0, "text": " We should go now. Agreed.",
        "speaker": "SPEAKER_00",
        "words": [
            {"start": 0.0, "end": 0.4, "word": " We", "speaker": "SPEAKER_00"},
            {"start": 0.4, "end": 0.8, "word": " should", "speaker": "SPEAKER_00"},
            {"start": 0.8, "end": 1.2, "word": " go", "speaker": "SPEAKER_00"},
            {"start": 1.2, "end": 1.6, "word": " now.", "speaker": "SPEAKER_00"},
            {"start": 2.0, "end": 2.6, "word": " Agreed.", "speaker": "SPEAKER_01"},
        ],
    }  # fmt: skip

    edited = edited_segment(segment, "Agreed.")

    assert edited["speaker"] == "SPEAKER_01"
    assert [w["speaker"] for w in edited["words"]] == ["SPEAKER_01"]


@override_settings(DIARIZATION_TIME_LIMIT_FACTOR=0.25, AUDIO_PROBE_TIMEOUT_SECONDS=120)
def test_a_second_pass_leaves_the_speakers_their_time_allowance():
    from types import SimpleNamespace

    tracker = SimpleNamespace(deadline=10_000.0)
    job = SimpleNamespace(duration_seconds=600.0, redact_pii_audio=False, diarize=True)

    labelling = processing._cutoff(job, tracker)
    second_pass = processing._cutoff(job, tracker, then_diarize=True)

    assert labelling == 10_000.0 - processing.RERUN_MARGIN_SECONDS
    assert second_pass == labelling - 150  # 600 s x 0.25
