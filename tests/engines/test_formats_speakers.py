"""Transcript renderers with diarized speakers: names, turns, cues that never mix two speakers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.audio_jobs.formats import (
    Cue,
    build_cues,
    render_json,
    render_srt,
    render_txt,
    render_vtt,
    speaker_display,
    verbose_json,
)

A, B = "SPEAKER_00", "SPEAKER_01"
LONG_TEXT = (
    "This sentence is deliberately long so that it has to be wrapped over more than two "
    "subtitle lines"
)


def _word(text: str, start: float, end: float, speaker: str | None = None) -> dict[str, Any]:
    word: dict[str, Any] = {"word": text, "start": start, "end": end}
    if speaker is not None:
        word["speaker"] = speaker
    return word


def _stored(segments: list[dict[str, Any]], names: dict[str, str] | None = None) -> dict:
    data: dict[str, Any] = {
        "text": "".join(s["text"] for s in segments),
        "language": "en",
        "duration": 10.0,
        "segments": segments,
    }
    if names is not None:
        data["speaker_names"] = names
    return data


def _dialogue() -> dict:
    """Alice (named) speaks two segments; SPEAKER_01 answers and Alice cuts in inside the same
    segment (no pause: only the speaker change splits it); the last segment has no words."""
    return _stored(
        [
            {
                "id": 0, "start": 0.0, "end": 2.0, "text": " Hello there.", "speaker": A,
                "words": [_word(" Hello", 0.0, 0.5, A), _word(" there.", 0.5, 1.0, A)],
            },
            {
                "id": 1, "start": 2.0, "end": 4.0, "text": " How are you?", "speaker": A,
                "words": [
                    _word(" How", 2.0, 2.4, A), _word(" are", 2.4, 2.6, A),
                    _word(" you?", 2.6, 3.0, A),
                ],
            },
            {
                "id": 2, "start": 5.0, "end": 8.0, "text": " Fine, thanks. And you?",
                "speaker": B,
                "words": [
                    _word(" Fine,", 5.0, 5.4, B), _word(" thanks.", 5.4, 6.0, B),
                    _word(" And", 6.2, 6.5, A), _word(" you?", 6.5, 7.0, A),
                ],
            },
            {"id": 3, "start": 9.0, "end": 10.0, "text": " Great.", "speaker": B},
        ],
        names={A: "Alice"},
    )  # fmt: skip


# ---- speaker_display -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "names", "shown"),
    [
        ("SPEAKER_00", None, "Speaker 1"),
        ("SPEAKER_00", {}, "Speaker 1"),
        ("SPEAKER_11", {"SPEAKER_00": "Alice"}, "Speaker 12"),
        ("SPEAKER_00", {"SPEAKER_00": "Alice"}, "Alice"),
        ("SPEAKER_00", {"SPEAKER_00": "   "}, "Speaker 1"),
        ("SPEAKER_00", {"SPEAKER_00": None}, "Speaker 1"),
        ("SPEAKER_00", {"SPEAKER_00": " Dr.\nJane \t Doe "}, "Dr. Jane Doe"),
        ("spk-a", None, "spk-a"),
        ("spk-a", {"spk-a": "Bob"}, "Bob"),
        ("SPEAKER_X", None, "SPEAKER_X"),
    ],
)
def test_speaker_display(label, names, shown):
    assert speaker_display(label, names) == shown


# ---- plain text ------------------------------------------------------------------------------


def test_txt_is_a_dialogue_script_split_where_the_words_change_speaker():
    assert render_txt(_dialogue()) == (
        "Alice: Hello there.\n"
        "How are you?\n"
        "Speaker 2: Fine, thanks.\n"
        "Alice: And you?\n"
        "Speaker 2: Great.\n"
    )


def test_txt_a_segment_without_a_speaker_has_no_prefix_and_ends_the_turn():
    stored = _stored(
        [
            {"start": 0.0, "end": 1.0, "text": " One.", "speaker": A},
            {"start": 1.0, "end": 2.0, "text": " Two."},
            {"start": 2.0, "end": 3.0, "text": " Three.", "speaker": A},
        ]
    )

    assert render_txt(stored) == "Speaker 1: One.\nTwo.\nSpeaker 1: Three.\n"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        # An edited word without a speaker goes with the word before it...
        (
            [_word(" Yes", 0.0, 0.5, A), _word(" indeed,", 0.5, 1.0),
             _word(" no", 1.0, 1.5, B), _word(" way.", 1.5, 2.0)],
            "Speaker 1: Yes indeed,\nSpeaker 2: no way.\n",
        ),
        # ... and at the start of the segment, with the first word after it.
        (
            [_word(" Well", 0.0, 0.5), _word(" no.", 0.5, 1.0, B), _word(" Yes.", 1.0, 2.0, A)],
            "Speaker 2: Well no.\nSpeaker 1: Yes.\n",
        ),
    ],
)  # fmt: skip
def test_words_without_a_speaker_join_their_neighbour(words, expected):
    segment = {"start": 0.0, "end": 2.0, "text": "".join(w["word"] for w in words), "words": words}

    assert render_txt(_stored([{**segment, "speaker": A}])) == expected


def test_words_of_one_speaker_show_their_speaker_over_the_segments():
    """The words are where the speakers were placed: an edit that removed the other speaker's
    words leaves the segment's majority label behind, and the words are right."""
    segment = {
        "start": 0.0, "end": 1.0, "text": " Hi there.", "speaker": B,
        "words": [_word(" Hi", 0.0, 0.4, A), _word(" there.", 0.4, 1.0, A)],
    }  # fmt: skip

    assert render_txt(_stored([segment])) == "Speaker 1: Hi there.\n"
    assert (
        render_srt(_stored([segment])) == "1\n00:00:00,000 --> 00:00:01,000\nSpeaker 1: Hi there.\n"
    )
    untimed = {**segment, "words": []}
    assert render_txt(_stored([untimed])) == "Speaker 2: Hi there.\n"


# ---- subtitles -------------------------------------------------------------------------------


def test_srt_names_the_speaker_of_every_cue_and_never_mixes_two():
    assert render_srt(_dialogue()) == (
        "1\n00:00:00,000 --> 00:00:01,500\nAlice: Hello there.\n\n"
        "2\n00:00:02,000 --> 00:00:03,500\nAlice: How are you?\n\n"
        "3\n00:00:05,000 --> 00:00:06,200\nSpeaker 2: Fine, thanks.\n\n"
        "4\n00:00:06,200 --> 00:00:07,500\nAlice: And you?\n\n"
        "5\n00:00:09,000 --> 00:00:10,000\nSpeaker 2: Great.\n"
    )


def test_vtt_uses_voice_spans():
    assert render_vtt(_dialogue()) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\n<v Alice>Hello there.\n\n"
        "00:00:02.000 --> 00:00:03.500\n<v Alice>How are you?\n\n"
        "00:00:05.000 --> 00:00:06.200\n<v Speaker 2>Fine, thanks.\n\n"
        "00:00:06.200 --> 00:00:07.500\n<v Alice>And you?\n\n"
        "00:00:09.000 --> 00:00:10.000\n<v Speaker 2>Great.\n"
    )


def test_cues_carry_the_speaker_label():
    cues = build_cues(_dialogue())

    assert [(c.start, c.end, c.lines, c.speaker) for c in cues] == [
        (0.0, 1.5, ("Hello there.",), A),
        (2.0, 3.5, ("How are you?",), A),
        (5.0, 6.2, ("Fine, thanks.",), B),
        (6.2, 7.5, ("And you?",), A),
        (9.0, 10.0, ("Great.",), B),
    ]


def test_every_cue_of_an_untimed_segment_has_its_speaker():
    stored = _stored([{"start": 10.0, "end": 20.0, "text": " " + LONG_TEXT, "speaker": B}])

    srt = render_srt(stored)
    vtt = render_vtt(stored)

    assert srt.split("\n\n")[0].split("\n")[2:] == [
        "Speaker 2: This sentence is deliberately",
        "long so that it has",
    ]
    assert srt.split("\n\n")[1].split("\n")[2:] == [
        "Speaker 2: to be wrapped over more",
        "than two subtitle lines",
        "",
    ]
    assert vtt.split("\n\n")[1].split("\n")[1:] == [
        "<v Speaker 2>This sentence is deliberately",
        "long so that it has",
    ]
    assert vtt.split("\n\n")[2].split("\n")[1:] == [
        "<v Speaker 2>to be wrapped over more",
        "than two subtitle lines",
        "",
    ]


def test_the_name_does_not_count_toward_the_line_width():
    """Naming (or renaming) a speaker never moves or rewraps a cue: the cues are those of the
    same transcript without speakers, the first line longer by the prefix."""
    words = [_word(" aaaa", 0.0, 0.3), _word(" bbbb", 0.3, 0.6), _word(" cccc", 0.6, 0.9)]
    plain = _stored([{"start": 0.0, "end": 1.0, "text": " aaaa bbbb cccc", "words": words}])
    named = json.loads(json.dumps(plain))
    named["segments"][0]["speaker"] = A
    named["speaker_names"] = {A: "Alexandra"}

    assert [(c.start, c.end, c.lines) for c in build_cues(named, max_line_width=10)] == [
        (c.start, c.end, c.lines) for c in build_cues(plain, max_line_width=10)
    ]
    assert render_srt(named, max_line_width=10) == (
        "1\n00:00:00,000 --> 00:00:01,000\nAlexandra: aaaa\nbbbb cccc\n"
    )


def test_a_speaker_change_and_a_pause_together_start_one_new_cue():
    words = [_word(" Hi.", 0.0, 0.5, A), _word(" Bye.", 3.0, 3.5, B)]
    stored = _stored(
        [{"start": 0.0, "end": 4.0, "text": " Hi. Bye.", "speaker": A, "words": words}]
    )

    assert [(c.start, c.end, c.lines, c.speaker) for c in build_cues(stored)] == [
        (0.0, 1.0, ("Hi.",), A),
        (3.0, 4.0, ("Bye.",), B),
    ]


def test_names_cannot_break_the_subtitle_formats():
    stored = _stored(
        [{"start": 0.0, "end": 1.0, "text": " hi", "speaker": A}],
        names={A: "<b>Bob</b> & co\n\nLtd -->"},
    )

    assert render_srt(stored) == (
        "1\n00:00:00,000 --> 00:00:01,000\n<\u200bb>Bob<\u200b/b> & co Ltd ->: hi\n"
    )
    assert render_vtt(stored) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n"
        "<v &lt;b&gt;Bob&lt;/b&gt; &amp; co Ltd --&gt;>hi\n"
    )


# ---- JSON ------------------------------------------------------------------------------------


def test_verbose_json_carries_labels_and_a_speaker_list():
    body = json.loads(render_json(_dialogue()))

    assert [s["speaker"] for s in body["segments"]] == [A, A, B, B]
    assert body["segments"][0] == {
        "id": 0, "seek": 0, "start": 0.0, "end": 2.0, "text": " Hello there.",
        "no_speech_prob": 0.0, "speaker": A,
    }  # fmt: skip
    assert body["words"][5:] == [
        {"word": "Fine,", "start": 5.0, "end": 5.4, "speaker": B},
        {"word": "thanks.", "start": 5.4, "end": 6.0, "speaker": B},
        {"word": "And", "start": 6.2, "end": 6.5, "speaker": A},
        {"word": "you?", "start": 6.5, "end": 7.0, "speaker": A},
    ]
    assert list(body) == ["task", "language", "duration", "text", "segments", "words", "speakers"]
    assert body["speakers"] == [{"id": A, "name": "Alice"}, {"id": B, "name": None}]


def test_verbose_json_lists_speakers_in_order_of_first_appearance():
    """The first word is SPEAKER_01's though the segment (most of it) is SPEAKER_00's; a blank
    name is no name; a word without a speaker gets no key."""
    segment = {
        "start": 0.0, "end": 3.0, "text": " Hm. Right, so.", "speaker": A,
        "words": [
            _word(" Hm.", 0.0, 0.3, B), _word(" Right,", 0.5, 1.5, A), _word(" so.", 1.5, 3.0),
        ],
    }  # fmt: skip

    body = verbose_json(_stored([segment], names={A: "Alice", B: "  "}))

    assert body["speakers"] == [{"id": B, "name": None}, {"id": A, "name": "Alice"}]
    assert body["words"][2] == {"word": "so.", "start": 1.5, "end": 3.0}


# ---- without diarization -----------------------------------------------------------------------


def test_names_without_speaker_labels_change_nothing():
    words = [_word(" Hello", 0.0, 0.5), _word(" world.", 0.5, 1.0)]
    plain = _stored([{"start": 0.0, "end": 2.0, "text": " Hello world.", "words": words}])
    named = {**plain, "speaker_names": {A: "Alice"}}

    assert render_txt(named) == render_txt(plain) == "Hello world.\n"
    assert (
        render_srt(named)
        == render_srt(plain)
        == ("1\n00:00:00,000 --> 00:00:01,500\nHello world.\n")
    )
    assert (
        render_vtt(named)
        == render_vtt(plain)
        == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello world.\n")
    )
    body = verbose_json(named)
    assert "speakers" not in body
    assert all("speaker" not in item for item in [*body["segments"], *body["words"]])
    assert build_cues(plain) == [Cue(0.0, 1.5, ("Hello world.",))]
