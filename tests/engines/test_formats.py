"""Transcript renderers against golden outputs, from the dataclass and from the stored dict."""

from __future__ import annotations

import json

import pytest

from apps.audio_jobs.formats import (
    FORMATS,
    MIN_CUE_SECONDS,
    build_cues,
    format_timestamp,
    render,
    render_json,
    render_srt,
    render_transcript,
    render_txt,
    render_vtt,
    verbose_json,
)
from workers.engines.base import Segment, TranscriptionResult, Word

LONG_TEXT = (
    "This sentence is deliberately long so that it has to be wrapped over more than two "
    "subtitle lines"
)
LONG_WORDS = LONG_TEXT.split(" ")


def _result() -> TranscriptionResult:
    hello = [
        Word(0.0, 0.6, " Hello", 0.9),
        Word(0.6, 0.9, " &", 0.5),
        Word(0.9, 1.6, " welcome", 0.9),
        Word(1.6, 2.5, " <everyone>.", 0.8),
    ]
    long_words = [
        Word(3723.5 + i * 0.5, 3723.9 + i * 0.5, " " + w, 0.9) for i, w in enumerate(LONG_WORDS)
    ]
    return TranscriptionResult(
        text="Hello & welcome <everyone>. " + " ".join(LONG_WORDS),
        language="en",
        language_probability=0.98,
        duration=3734.25,
        segments=[
            Segment(
                0,
                0.0,
                2.5,
                " Hello & welcome <everyone>.",
                -0.1,
                0.01,
                hello,
                seek=0,
                tokens=[50364, 2425],
                temperature=0.0,
                compression_ratio=1.1,
            ),
            Segment(
                1,
                3723.5,
                3733.9,
                " " + " ".join(LONG_WORDS),
                -0.25,
                0.02,
                long_words,
                seek=372350,
                tokens=[639],
                temperature=0.2,
                compression_ratio=1.3,
            ),
        ],
        engine_info={"engine": "faster-whisper"},
    )


GOLDEN_SRT = """\
1
00:00:00,000 --> 00:00:02,500
Hello & welcome <everyone>.

2
01:02:03,500 --> 01:02:08,000
This sentence is deliberately
long so that it has

3
01:02:08,000 --> 01:02:12,900
to be wrapped over more
than two subtitle lines
"""

GOLDEN_VTT = """\
WEBVTT

00:00:00.000 --> 00:00:02.500
Hello &amp; welcome &lt;everyone&gt;.

01:02:03.500 --> 01:02:08.000
This sentence is deliberately
long so that it has

01:02:08.000 --> 01:02:12.900
to be wrapped over more
than two subtitle lines
"""

GOLDEN_TXT = """\
Hello & welcome <everyone>.
This sentence is deliberately long so that it has to be wrapped over more than two subtitle lines
"""


@pytest.mark.parametrize("form", ["dataclass", "dict"])
def test_srt_golden(form):
    result = _result() if form == "dataclass" else json.loads(json.dumps(_result().to_dict()))

    assert render_srt(result) == GOLDEN_SRT


@pytest.mark.parametrize("form", ["dataclass", "dict"])
def test_vtt_golden(form):
    result = _result() if form == "dataclass" else json.loads(json.dumps(_result().to_dict()))

    assert render_vtt(result) == GOLDEN_VTT


def test_txt_golden():
    assert render_txt(_result()) == GOLDEN_TXT


def test_verbose_json_uses_openai_field_names():
    body = json.loads(render_json(_result().to_dict()))

    assert list(body) == ["task", "language", "duration", "text", "segments", "words"]
    assert body["task"] == "transcribe"
    assert body["language"] == "en"
    assert body["duration"] == 3734.25
    assert body["segments"][0] == {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": 2.5,
        "text": " Hello & welcome <everyone>.",
        "tokens": [50364, 2425],
        "temperature": 0.0,
        "avg_logprob": -0.1,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
    }
    assert body["words"][:2] == [
        {"word": "Hello", "start": 0.0, "end": 0.6},
        {"word": "&", "start": 0.6, "end": 0.9},
    ]
    assert len(body["words"]) == 4 + len(LONG_WORDS)


def test_verbose_json_omits_fields_the_stored_data_lacks():
    stored = {
        "text": "Hi.",
        "language": "fr",
        "duration": 1.0,
        "segments": [{"start": 0.0, "end": 1.0, "text": " Hi."}],
    }

    body = verbose_json(stored)

    assert body["segments"] == [
        {"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": " Hi.", "no_speech_prob": 0.0}
    ]
    assert body["words"] == []


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0, "00:00:00,000", "00:00:00.000"),
        (1.0005, "00:00:01,000", "00:00:01.000"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3599.999, "00:59:59,999", "00:59:59.999"),
        (3723.5, "01:02:03,500", "01:02:03.500"),
        (360000.25, "100:00:00,250", "100:00:00.250"),
        (-3, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_format_timestamp(seconds, srt, vtt):
    assert format_timestamp(seconds) == srt
    assert format_timestamp(seconds, decimal_marker=".") == vtt


def test_untimed_long_segments_are_split_in_proportion_to_their_text():
    stored = {
        "segments": [{"start": 10.0, "end": 20.0, "text": " " + " ".join(LONG_WORDS)}],
    }

    cues = build_cues(stored)

    assert [c.lines for c in cues] == [
        ("This sentence is deliberately", "long so that it has"),
        ("to be wrapped over more", "than two subtitle lines"),
    ]
    assert cues[0].start == 10.0
    assert cues[0].end == cues[1].start
    assert 14.0 < cues[0].end < 16.0
    assert cues[1].end == 20.0


def test_every_cue_line_fits_the_width():
    text = " ".join(["word"] * 200)

    cues = build_cues({"segments": [{"start": 0.0, "end": 60.0, "text": text}]})

    assert all(len(line) <= 42 for cue in cues for line in cue.lines)
    assert all(len(cue.lines) <= 2 for cue in cues)
    assert sum(len(line.split()) for cue in cues for line in cue.lines) == 200
    assert [cue.start for cue in cues] == sorted(cue.start for cue in cues)


def test_text_without_spaces_is_cut_to_the_width():
    cues = build_cues({"segments": [{"start": 0.0, "end": 4.0, "text": "字" * 100}]})

    assert all(len(line) <= 42 for cue in cues for line in cue.lines)
    assert "".join(line for cue in cues for line in cue.lines) == "字" * 100


def test_arrows_in_text_cannot_fake_a_timing_line():
    stored = {"segments": [{"start": 0.0, "end": 1.0, "text": " a --> b"}]}

    assert "a -> b" in render_srt(stored)
    assert "a --&gt; b" in render_vtt(stored)


def test_an_empty_transcript_renders_as_empty_documents():
    empty = {"text": "", "language": "en", "duration": 3.0, "segments": []}

    assert render_txt(empty) == ""
    assert render_srt(empty) == ""
    assert render_vtt(empty) == "WEBVTT\n"
    assert json.loads(render_json(empty))["segments"] == []


def test_render_transcript_gives_body_type_and_extension():
    body, media_type, extension = render_transcript(_result().to_dict(), "vtt")

    assert body == GOLDEN_VTT
    assert media_type == "text/vtt; charset=utf-8"
    assert extension == "vtt"
    assert set(FORMATS) == {"txt", "srt", "vtt", "json"}


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="Unknown format 'docx'"):
        render(_result(), "docx")


def test_a_pause_inside_a_segment_starts_a_new_cue_and_no_cue_spans_the_silence():
    """A batched engine's segment can span a whole window, silences included (here 6 s): the
    text before the pause leaves the screen shortly after it is spoken."""
    words = [
        Word(2.67, 3.2, " Hello", 0.9),
        Word(3.2, 3.6, " world.", 0.9),
        Word(12.61, 13.0, " Goodbye", 0.9),
        Word(13.0, 13.4, " now.", 0.9),
    ]
    segment = Segment(0, 2.67, 16.59, " Hello world. Goodbye now.", -0.1, 0.01, words)
    result = TranscriptionResult(
        text=segment.text, language="en", language_probability=0.9, duration=20.0,
        segments=[segment],
    )  # fmt: skip

    assert render_srt(result) == (
        "1\n00:00:02,670 --> 00:00:04,100\nHello world.\n\n"
        "2\n00:00:12,610 --> 00:00:13,900\nGoodbye now.\n"
    )


def test_no_arrow_survives_in_srt_text():
    words = [Word(0.0, 1.0, " a--->b", 0.9), Word(1.0, 2.0, " c-->d", 0.9)]
    segment = Segment(0, 0.0, 2.0, " a--->b c-->d", -0.1, 0.01, words)
    result = TranscriptionResult(
        text=segment.text, language="en", language_probability=0.9, duration=2.0,
        segments=[segment],
    )  # fmt: skip

    text = render_srt(result).split("\n", 2)[2]
    assert "-->" not in text
    assert "a->b c->d" in text


def test_a_last_word_collapsed_onto_the_end_of_the_audio_still_gets_a_visible_cue():
    """Whisper often stamps the last word start == end == the end of the audio; a zero-length
    cue is dropped or flashed by players."""
    words = [Word(0.0, 1.0, " Hello", 0.9), Word(3.0, 3.0, " bye.", 0.9)]
    segment = Segment(0, 0.0, 3.0, " Hello bye.", -0.1, 0.01, words)
    result = TranscriptionResult(
        text=segment.text, language="en", language_probability=0.9, duration=3.0,
        segments=[segment],
    )  # fmt: skip

    cues = build_cues(result)

    assert [(c.start, c.end, c.lines) for c in cues] == [
        (0.0, 1.5, ("Hello",)),
        (3.0, 3.0 + MIN_CUE_SECONDS, ("bye.",)),
    ]


def test_a_short_cue_is_lengthened_only_up_to_the_next_cue():
    stored = {
        "segments": [
            {"start": 1.0, "end": 1.0, "text": " one"},
            {"start": 1.3, "end": 2.5, "text": " two"},
            {"start": 5.0, "end": 5.0, "text": " three"},
            {"start": 5.0, "end": 6.0, "text": " four"},
        ]
    }

    cues = build_cues(stored)

    assert [(c.start, c.end) for c in cues] == [
        (1.0, 1.3),  # up to "two", never over it
        (1.3, 2.5),  # already long enough: unchanged
        (5.0, 5.0 + MIN_CUE_SECONDS),  # starts with "four": both are shown together
        (5.0, 6.0),
    ]
    assert all(c.end > c.start for c in cues)


@pytest.mark.parametrize(
    ("spoken", "shown"),
    [
        ("<i>quoted</i>", "<\u200bi>quoted<\u200b/i>"),
        ("<FONT color=red>x</font>", "<\u200bFONT color=red>x<\u200b/font>"),
        ("{\\an8}top", "{\u200b\\an8}top"),
        ("a < b > c {curly}", "a < b > c {curly}"),
        ("<everyone>", "<everyone>"),
    ],
)
def test_srt_text_that_players_read_as_styling_is_shown_as_text(spoken, shown):
    stored = {"segments": [{"start": 0.0, "end": 1.0, "text": spoken}]}

    assert render_srt(stored) == f"1\n00:00:00,000 --> 00:00:01,000\n{shown}\n"
