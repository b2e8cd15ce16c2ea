"""Per-speaker analytics of diarized transcripts: the numbers, worked out by hand, and the
Speakers section of the transcript report (PDF and JSON), and the speaker column of its CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.utils import timezone
from pypdf import PdfReader

from apps.audio_jobs import editing
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob
from apps.reports import analytics, services
from apps.reports.analytics import Word
from apps.reports.models import Report, ReportStatus
from tests.notify_support import completed_job

A, B = "SPEAKER_00", "SPEAKER_01"


def word(text: str, start: float, end: float, speaker: str | None = None) -> dict[str, Any]:
    w = {"word": text, "start": start, "end": end, "probability": 0.9}
    if speaker is not None:
        w["speaker"] = speaker
    return w


# Four turns: A 0.0-2.0 | B 2.5-3.5 | A 5.0-7.0 | B 7.2-11.0 (its last three words spread over a
# segment with no word timings). "you" (A) and "know" (B) make no "you know": not one speaker's.
# In segment 2, "the" has no label of its own and goes with "Uh" before it; "okay?" keeps B.
SEGMENTS: list[dict[str, Any]] = [
    {
        "id": 0,
        "start": 0.0,
        "end": 2.0,
        "text": " Um, budget budget you",
        "speaker": A,
        "words": [
            word(" Um,", 0.0, 0.5, A),
            word(" budget", 0.5, 1.0, A),
            word(" budget", 1.0, 1.5, A),
            word(" you", 1.5, 2.0, A),
        ],
    },
    {
        "id": 1,
        "start": 2.5,
        "end": 3.5,
        "text": " know right.",
        "speaker": B,
        "words": [word(" know", 2.5, 3.0, B), word(" right.", 3.0, 3.5, B)],
    },
    {
        "id": 2,
        "start": 5.0,
        "end": 7.5,
        "text": " Uh the plan okay?",
        "speaker": A,
        "words": [
            word(" Uh", 5.0, 5.4, A),
            word(" the", 5.4, 6.0),
            word(" plan", 6.0, 7.0, A),
            word(" okay?", 7.2, 7.5, B),
        ],
    },
    {"id": 3, "start": 8.0, "end": 11.0, "text": " Fine fine good.", "speaker": B},
]

# A: turns of 2.0 s and 2.0 s; tokens um budget budget you uh the plan (7, 6 types).
#    MTLD forwards: a factor at the second "budget" (2/3 <= 0.72), then a full-TTR rest -> 7 / 1;
#    backwards no factor, rest (1 - 6/7) / 0.28 -> 7 / 0.5102 = 13.72; mean 10.36.
# B: turns of 1.0 s and 3.8 s; tokens know right okay fine fine good (6, 5 types).
#    MTLD forwards: rest (1 - 5/6) / 0.28 -> 6 / 0.5952 = 10.08; backwards a factor at the
#    second "fine", then full TTR -> 6 / 1; mean 8.04.
# Total talk time 8.8 s: A 4.0 / 8.8 = 45.5 %, B 4.8 / 8.8 = 54.5 %.
EXPECTED = [
    {
        "label": A,
        "talk_seconds": 4.0,
        "talk_share_percent": 45.5,
        "word_count": 7,
        "words_per_minute": 105.0,  # 7 / (4.0 / 60)
        "turns": 2,
        "longest_monologue_seconds": 2.0,
        "type_token_ratio": 0.8571,
        "mtld": 10.36,
        "filler_word_total": 2,  # um, uh
    },
    {
        "label": B,
        "talk_seconds": 4.8,
        "talk_share_percent": 54.5,
        "word_count": 6,
        "words_per_minute": 75.0,  # 6 / (4.8 / 60)
        "turns": 2,
        "longest_monologue_seconds": 3.8,
        "type_token_ratio": 0.8333,
        "mtld": 8.04,
        "filler_word_total": 0,
    },
]


# ---- pure functions -----------------------------------------------------------------------------


def test_words_carry_their_speaker_as_the_transcript_shows_it():
    words = analytics.words_from_segments(SEGMENTS)

    assert [(w.text.strip(), w.speaker) for w in words] == [
        ("Um,", A),
        ("budget", A),
        ("budget", A),
        ("you", A),
        ("know", B),
        ("right.", B),
        ("Uh", A),
        ("the", A),  # unlabelled, in a segment that changes speaker: the word before's
        ("plan", A),
        ("okay?", B),
        ("Fine", B),
        ("fine", B),
        ("good.", B),
    ]
    assert (words[-3].start, words[-1].end) == (8.0, 11.0)


def test_speaker_turns_are_runs_of_consecutive_words_by_one_speaker():
    turns = analytics.speaker_turns(analytics.words_from_segments(SEGMENTS))

    assert [(speaker, [w.text.strip() for w in run]) for speaker, run in turns] == [
        (A, ["Um,", "budget", "budget", "you"]),
        (B, ["know", "right."]),
        (A, ["Uh", "the", "plan"]),
        (B, ["okay?", "Fine", "fine", "good."]),
    ]


def test_speaker_analytics_match_hand_computed_values():
    assert analytics.speaker_analytics(analytics.words_from_segments(SEGMENTS)) == EXPECTED


def test_a_word_without_tokens_does_not_split_a_turn_and_a_pause_stays_inside_it():
    words = [
        Word(" So", 0.0, 0.5, speaker=A),
        Word(" …", 0.5, 0.6, speaker=B),  # punctuation only: no token, no turn
        Word(" you", 3.0, 3.5, speaker=A),  # after a 2.5 s pause: still A's turn
        Word(" know", 3.5, 4.0, speaker=A),
    ]

    (row,) = analytics.speaker_analytics(words)

    assert row["turns"] == 1
    assert row["talk_seconds"] == row["longest_monologue_seconds"] == 4.0
    assert row["word_count"] == 3
    assert row["filler_word_total"] == 1  # "you know", within the turn
    assert row["talk_share_percent"] == 100.0


def test_a_speaker_with_under_a_second_of_talk_has_no_rate():
    words = [Word(" Yes.", 0.0, 0.4, speaker=B), Word(" Right", 1.0, 2.5, speaker=A)]

    rows = {r["label"]: r for r in analytics.speaker_analytics(words)}

    assert rows[B]["words_per_minute"] is None
    assert rows[A]["words_per_minute"] == 40.0  # 1 / (1.5 / 60)
    assert (rows[B]["talk_share_percent"], rows[A]["talk_share_percent"]) == (21.1, 78.9)


def test_words_of_an_unlabelled_segment_end_a_turn_and_belong_to_nobody():
    segments = [
        {"start": 0, "end": 1, "text": " one", "speaker": A},
        {"start": 1, "end": 2, "text": " two"},
        {"start": 2, "end": 3, "text": " three", "speaker": A},
    ]

    (row,) = analytics.speaker_analytics(analytics.words_from_segments(segments))

    assert (row["turns"], row["word_count"], row["talk_seconds"]) == (2, 2, 2.0)


def test_a_transcript_without_speakers_has_no_speaker_analytics():
    segments = [{k: v for k, v in s.items() if k != "speaker"} for s in SEGMENTS[3:]]

    assert analytics.speaker_analytics(analytics.words_from_segments(segments)) == []
    assert analytics.segment_speaker(segments[0]) is None


def test_segment_speaker_is_its_label_else_its_first_words():
    unlabelled = {"start": 0, "end": 1, "text": " hi", "words": [word(" hi", 0.0, 1.0, B)]}

    assert analytics.segment_speaker(SEGMENTS[2]) == A
    assert analytics.segment_speaker(unlabelled) == B


# ---- the report ---------------------------------------------------------------------------------


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def diarized_job(owner) -> TranscriptionJob:
    job = TranscriptionJob.objects.create(
        organisation=owner.organisation,
        created_by=owner.user,
        status=JobStatus.COMPLETED,
        original_filename="standup.wav",
        duration_seconds=12.0,
        language="en",
        model_used="tiny.en",
        engine="faster-whisper",
        processing_seconds=2.0,
        finished_at=timezone.now(),
        diarize=True,
        diarization={
            "model": "resemblyzer-test",
            "speakers": [
                {"id": A, "seconds": 4.1, "words": 7},
                {"id": B, "seconds": 2.3, "words": 6},
            ],
        },
        speaker_names={A: "Alice Moreau"},
    )
    Transcript.objects.create(
        job=job,
        text=" ".join(s["text"].strip() for s in SEGMENTS),
        language="en",
        language_probability=0.99,
        duration=12.0,
        segments=SEGMENTS,
        word_count=13,
    )
    return job


@pytest.fixture
def generate(owner, client, auth):
    """Build a transcript report of `job` in `fmt` as the worker does; its file, downloaded."""

    def build(job: TranscriptionJob, fmt: str) -> bytes:
        report = services.report_request(
            organisation=owner.organisation,
            user=owner.user,
            kind="transcript",
            format=fmt,
            job_id=str(job.pk),
        )
        services.report_generate(report_id=str(report.pk))
        assert Report.objects.get(pk=report.pk).status == ReportStatus.READY
        response = client.get(f"/api/v1/reports/{report.pk}/download", **auth)
        assert response.status_code == 200
        return b"".join(response.streaming_content)

    return build


def test_the_json_report_holds_each_speakers_analytics_under_their_name(owner, generate):
    data = json.loads(generate(diarized_job(owner), "json"))

    assert data["speakers"] == [
        {"name": "Alice Moreau", **EXPECTED[0]},
        {"name": "Speaker 2", **EXPECTED[1]},
    ]
    assert data["metadata"]["diarization_model"] == "resemblyzer-test"
    assert [(s["speaker"], s["speaker_name"]) for s in data["segments"]] == [
        (A, "Alice Moreau"),
        (B, "Speaker 2"),
        (A, "Alice Moreau"),
        (B, "Speaker 2"),
    ]
    # The whole transcript's analytics are as before.
    assert data["analytics"]["word_count"] == 13


def test_the_pdf_report_has_a_speakers_section_and_names_each_line(owner, generate):
    text = pdf_text(generate(diarized_job(owner), "pdf"))
    flat = " ".join(text.split())

    assert "Speakers" in text
    section = flat[flat.index("Speakers Speaker Talk time") : flat.index("Speaking rate over time")]
    # name, label, talk time, share, words, wpm, turns, longest turn, TTR, MTLD, fillers
    assert "Alice Moreau SPEAKER_00 4.0 s 45.5% 7 105.0 2 2.0 s 0.8571 10.36 2" in section
    assert "Speaker 2 SPEAKER_01 4.8 s 54.5% 6 75.0 2 3.8 s 0.8333 8.04 0" in section
    assert "resemblyzer-test" in section
    assert "[00:00:00] Alice Moreau: Um, budget budget you" in flat
    assert "[00:00:08] Speaker 2: Fine fine good." in flat


def test_the_csv_report_names_each_segments_speaker(owner, generate):
    job = diarized_job(owner)
    job.speaker_names = {A: "Alice Moreau", B: "@Bob"}  # a name a spreadsheet would run
    job.save(update_fields=["speaker_names"])

    rows = list(csv.reader(io.StringIO(generate(job, "csv").decode("utf-8-sig"))))

    assert rows[0][4:] == ["speaker", "text"]
    assert [row[4] for row in rows[1:]] == ["Alice Moreau", "'@Bob", "Alice Moreau", "'@Bob"]
    assert rows[1][5] == "Um, budget budget you"
    assert len(rows) == 1 + len(SEGMENTS)


def test_the_report_counts_the_edited_transcript(owner, generate):
    job = diarized_job(owner)
    editing.transcript_edit(job=job, revision=0, segments=[{"id": 1, "text": "know right now."}])

    data = json.loads(generate(job, "json"))

    assert data["metadata"]["transcript_revision"] == 1
    speaker_2 = data["speakers"][1]
    assert speaker_2["name"] == "Speaker 2"
    assert speaker_2["word_count"] == 7  # the added "now" is B's: the word before it is
    assert data["speakers"][0]["word_count"] == 7
    assert data["segments"][1]["text"] == "know right now."


def test_a_report_without_speakers_has_no_speaker_section(owner, generate):
    job = completed_job(owner.organisation, owner.user)

    data = json.loads(generate(job, "json"))
    text = pdf_text(generate(job, "pdf"))

    assert "speakers" not in data
    assert "diarization_model" not in data["metadata"]
    assert all(set(s) == {"start", "end", "text"} for s in data["segments"])
    assert "Speakers" not in text and "Talk time" not in text


@pytest.mark.parametrize("names", [{}, {A: "  "}])
def test_unnamed_speakers_are_shown_by_number(owner, generate, names):
    job = diarized_job(owner)
    job.speaker_names = names
    job.save(update_fields=["speaker_names"])

    data = json.loads(generate(job, "json"))

    assert [s["name"] for s in data["speakers"]] == ["Speaker 1", "Speaker 2"]
