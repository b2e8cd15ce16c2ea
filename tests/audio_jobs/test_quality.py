"""Automatic quality checks on machine transcripts (`apps.audio_jobs.quality`)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from apps.audio_jobs import quality
from apps.audio_jobs.quality import quality_summary, speech_seconds_from, transcript_quality
from workers.engines.base import TranscriptionOptions


def words_of(text: str, start: float, end: float, probability: float = 0.95) -> list[dict]:
    """Whisper-style words (leading space kept) spread evenly over [start, end]."""
    parts = text.split()
    step = (end - start) / len(parts)
    return [
        {
            "start": round(start + i * step, 3),
            "end": round(start + (i + 1) * step, 3),
            "word": f" {part}",
            "probability": probability,
        }
        for i, part in enumerate(parts)
    ]


def segment(
    seg_id: int,
    start: float,
    end: float,
    text: str,
    *,
    probability: float = 0.95,
    words: list[dict] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "id": seg_id,
        "start": start,
        "end": end,
        "text": f" {text}",
        "avg_logprob": -0.25,
        "no_speech_prob": 0.05,
        "compression_ratio": 1.3,
        "temperature": 0.0,
        "words": words_of(text, start, end, probability) if words is None else words,
        **fields,
    }


def result(segments: list[dict], **fields: Any) -> dict[str, Any]:
    return {
        "text": " ".join(s["text"].strip() for s in segments),
        "language": "en",
        "language_probability": 1.0,
        "duration": max((s["end"] for s in segments), default=0.0) + 1.0,
        "segments": segments,
        "task": "transcribe",
        **fields,
    }


def sentences(texts: list[str], *, seconds: float = 4.0, **fields: Any) -> list[dict]:
    """One segment per text, back to back."""
    return [
        segment(i, i * seconds, (i + 1) * seconds - 0.5, text, **fields)
        for i, text in enumerate(texts)
    ]


def check(data: dict, *, speech: float | None = None, declared: bool = True) -> dict:
    return transcript_quality(data, speech_seconds=speech, language_declared=declared)


def codes(report: dict) -> list[str]:
    return [flag["code"] for flag in report["flags"]]


def flag(report: dict, code: str) -> dict:
    return next(f for f in report["flags"] if f["code"] == code)


CLEAN = [
    "Please send the quarterly report to the finance team before Friday.",
    "The meeting has been moved to the large conference room on the second floor.",
]


def test_a_clean_transcript_has_no_flags():
    data = result(sentences(CLEAN))

    report = check(data, speech=8.0)

    assert report["version"] == 1
    assert report["flags"] == []
    assert report["metrics"] == {
        "segment_count": 2,
        "word_count": 25,
        "scored_word_count": 25,
        "mean_word_probability": 0.95,
        "low_confidence_word_ratio": 0.0,
        "transcribed_seconds": 7.0,
        "speech_seconds": 8.0,
        "coverage": 0.875,
        "segments_flagged": 0,
        "language": "en",
        "language_probability": 1.0,
    }
    assert quality_summary(report) == "No problems found."


# --- repetition_loop ---------------------------------------------------------------------------


def test_a_phrase_repeated_across_segments_is_a_loop():
    loop = ["Thank you.", "Thank you, thank you.", "THANK YOU! Thank you", "thank you thank you"]
    data = result(sentences([CLEAN[0], *loop, "thank you", CLEAN[1]], seconds=2.0))

    report = check(data)

    loop_flag = flag(report, "repetition_loop")
    assert loop_flag["severity"] == "warning"
    assert loop_flag["span_count"] == 1
    assert loop_flag["spans"] == [
        {
            "start": 2.0,
            "end": 11.5,
            "segment_ids": [1, 2, 3, 4, 5],
            "phrase": "thank you",
            "repeats": 8,
        }
    ]
    assert loop_flag["message"] == (
        '"thank you" is repeated 8 times in a row at 00:00:02: the decoder may have got stuck '
        "in a loop."
    )
    assert report["metrics"]["segments_flagged"] == 5


@pytest.mark.parametrize(
    "text",
    [
        "No no, that is not what I said at all.",
        "It was a very very good meeting, thank you thank you.",
        "Bye bye bye, see you all tomorrow.",
        "Ha ha ha ha ha ha ha ha ha that is funny.",
        "One, two, three, four, five, six, seven, eight, nine, ten.",
        "Thank you, thank you, thank you, thank you, everyone.",
        "We will rock you, we will rock you, we will rock you, yes.",
        "Let it be, let it be, let it be, let it be, whisper words of wisdom",
    ],
)
def test_ordinary_repetition_is_not_a_loop(text):
    data = result([segment(0, 0.0, 10.0, text)])

    assert codes(check(data)) == []


def test_a_chorus_line_sung_twice_is_not_a_loop():
    chorus = "and I will always love you and I will always"
    data = result(sentences([chorus, chorus, CLEAN[0]]))

    assert codes(check(data)) == []


@pytest.mark.parametrize(
    ("phrase", "repeats", "flagged"),
    [
        ("no", 9, False),
        ("no", 10, True),
        ("thank you", 4, False),
        ("thank you", 5, True),
        ("I am sorry", 4, False),
        ("I am sorry", 5, True),
        ("this is the end of the road friend", 4, False),
        ("this is the end of the road friend", 5, True),
    ],
)
def test_loop_thresholds_at_the_edges(phrase, repeats, flagged):
    data = result([segment(0, 0.0, 30.0, " ".join([phrase] * repeats))])

    report = check(data)

    assert ("repetition_loop" in codes(report)) is flagged
    if flagged:
        span = flag(report, "repetition_loop")["spans"][0]
        assert (span["phrase"], span["repeats"]) == (phrase.lower(), repeats)


def test_a_single_word_loop_is_reported_as_that_word():
    data = result([segment(0, 0.0, 30.0, "so " + "okay " * 24 + "right")])

    span = flag(check(data), "repetition_loop")["spans"][0]

    assert (span["phrase"], span["repeats"]) == ("okay", 24)


@pytest.mark.parametrize(("copies", "flagged"), [(2, False), (3, True)])
def test_a_whole_segment_repeated_back_to_back_is_a_loop(copies, flagged):
    line = "The committee will meet again next week to discuss it."
    data = result(sentences([CLEAN[0], *[line] * copies, CLEAN[1]]))

    report = check(data)

    assert ("repetition_loop" in codes(report)) is flagged
    if flagged:
        span = flag(report, "repetition_loop")["spans"][0]
        assert span["repeats"] == 3
        assert span["segment_ids"] == [1, 2, 3]
        assert span["phrase"] == "the committee will meet again next week to discuss it"


def test_separate_loops_are_separate_spans_and_capped():
    texts = []
    for i in range(quality.MAX_SPANS + 5):
        texts += [CLEAN[i % 2], f"item {i} " * 12]
    data = result(sentences(texts))

    loop_flag = flag(check(data), "repetition_loop")

    assert loop_flag["span_count"] == quality.MAX_SPANS + 5
    assert len(loop_flag["spans"]) == quality.MAX_SPANS
    assert loop_flag["spans"][0]["phrase"] == "item 0"
    assert loop_flag["message"].endswith(
        f"(and {quality.MAX_SPANS + 4} more): the decoder may have got stuck in a loop."
    )


def test_unsorted_segments_are_read_in_time_order():
    ordered = sentences(["hello there " * 3, "hello there " * 3, CLEAN[0]])
    data = result([ordered[2], ordered[1], ordered[0]])
    data["segments"][0]["start"], data["segments"][0]["end"] = 20.0, 24.0

    span = flag(check(data), "repetition_loop")["spans"][0]

    assert (span["phrase"], span["repeats"]) == ("hello there", 6)
    assert span["segment_ids"] == [0, 1]


# --- suspected_hallucination ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "probability", "reasons"),
    [
        ({"compression_ratio": 2.4}, 0.95, None),
        ({"compression_ratio": 2.41}, 0.95, ["compression_ratio"]),
        ({"avg_logprob": -1.0}, 0.95, None),
        ({"avg_logprob": -1.01}, 0.95, ["avg_logprob"]),
        ({"no_speech_prob": 0.79}, 0.95, None),
        ({"no_speech_prob": 0.8}, 0.95, ["no_speech_prob"]),
        ({"no_speech_prob": 0.6}, 0.4, ["no_speech_prob"]),
        ({"no_speech_prob": 0.59}, 0.4, None),
    ],
)
def test_segments_the_decoder_doubted_are_suspected(fields, probability, reasons):
    data = result([segment(0, 3.0, 6.0, "the lights went out", probability=probability, **fields)])

    report = check(data)

    if reasons is None:
        assert "suspected_hallucination" not in codes(report)
    else:
        found = flag(report, "suspected_hallucination")
        assert found["spans"] == [
            {"start": 3.0, "end": 6.0, "segment_ids": [0], "reasons": reasons}
        ]
        assert found["message"] == (
            "1 segment may be text invented over silence, music or noise, the first at 00:00:03."
        )


@pytest.mark.parametrize(
    "text",
    [
        "Thank you for watching!",
        "SUBTITLES BY THE AMARA.ORG COMMUNITY",
        "Please, subscribe.",
        "you",
        "Thank you.",
    ],
)
def test_stock_phrases_over_non_speech_are_suspected(text):
    data = result([segment(0, 10.0, 12.0, text, probability=0.3, no_speech_prob=0.4)])

    spans = flag(check(data), "suspected_hallucination")["spans"]

    assert spans[0]["reasons"] == ["stock_phrase"]


@pytest.mark.parametrize(
    "text", ["Thank you for watching, and see you next week.", "Thank you.", "Please subscribe."]
)
def test_stock_phrases_in_confident_speech_are_not_suspected(text):
    data = result([segment(0, 10.0, 12.0, text, probability=0.9, no_speech_prob=0.1)])

    assert codes(check(data)) == []


def test_without_words_a_low_log_probability_makes_a_segment_weak():
    weak = segment(0, 0.0, 2.0, "Thanks for watching.", words=[], avg_logprob=-0.8)
    strong = segment(1, 5.0, 7.0, "Thanks for watching.", words=[], avg_logprob=-0.3)

    report = check(result([weak, strong]))

    assert flag(report, "suspected_hallucination")["spans"][0]["segment_ids"] == [0]


def test_suspect_segments_close_together_are_one_span():
    suspects = sentences(["a b c d", "e f g h", "i j k l"], seconds=2.0, compression_ratio=3.0)
    suspects[2]["start"], suspects[2]["end"] = 20.0, 21.0

    found = flag(check(result(suspects)), "suspected_hallucination")

    assert [(s["start"], s["end"], s["segment_ids"]) for s in found["spans"]] == [
        (0.0, 3.5, [0, 1]),
        (20.0, 21.0, [2]),
    ]
    assert found["message"].startswith("3 segments may be text invented")


def test_punctuation_only_segments_are_not_suspected():
    data = result([segment(0, 0.0, 1.0, "...", words=[], no_speech_prob=0.9)])

    assert "suspected_hallucination" not in codes(check(data))


# --- low_confidence ---------------------------------------------------------------------------


def with_probabilities(probabilities: list[Any], seconds: float = 30.0, **word_fields: Any) -> dict:
    words = words_of(" ".join(f"w{i}" for i in range(len(probabilities))), 0.0, seconds)
    for word, probability in zip(words, probabilities, strict=True):
        word["probability"] = probability
        word.update(word_fields)
    return result([segment(0, 0.0, seconds, "", words=words)])


def test_a_run_of_low_words_is_a_low_confidence_note():
    probabilities = [0.9] * 40
    probabilities[10:13] = [0.2, 0.49, 0.3]
    probabilities[30] = 0.1  # alone: not a stretch

    report = check(with_probabilities(probabilities))

    low = flag(report, "low_confidence")
    assert low["severity"] == "info"
    assert low["spans"] == [{"start": 7.5, "end": 9.75, "segment_ids": [0]}]
    assert low["message"] == (
        "10% of words were recognised with low confidence (probability under 0.5), in 1 stretch."
    )
    assert report["metrics"]["low_confidence_word_ratio"] == 0.1
    assert report["metrics"]["mean_word_probability"] == 0.8372
    assert report["metrics"]["segments_flagged"] == 0  # notes do not count


def test_two_low_words_and_a_probability_of_one_half_are_not_a_run():
    probabilities = [0.9] * 40
    probabilities[10:12] = [0.2, 0.3]
    probabilities[20:23] = [0.5, 0.5, 0.5]

    assert codes(check(with_probabilities(probabilities))) == []


@pytest.mark.parametrize(("low", "severity"), [(5, "info"), (6, "warning")])
def test_many_low_words_make_a_warning(low, severity):
    probabilities = [0.9] * (40 - low) + [0.1] * low  # 15% is 6 words of 40

    assert flag(check(with_probabilities(probabilities)), "low_confidence")["severity"] == severity


def test_scattered_low_words_warn_without_spans():
    probabilities = [0.9, 0.9, 0.2] * 10

    low = flag(check(with_probabilities(probabilities)), "low_confidence")

    assert (low["severity"], low["spans"], low["span_count"]) == ("warning", [], 0)


def test_a_high_share_of_few_words_is_not_a_warning():
    assert codes(check(with_probabilities([0.9, 0.1, 0.9, 0.1]))) == []


def test_low_stretches_close_together_merge_and_are_capped():
    probabilities = ([0.1] * 3 + [0.9]) * 3 + ([0.9] * 4 + [0.1] * 3 + [0.9] * 4) * 30
    data = with_probabilities(probabilities, seconds=len(probabilities) / 2)  # 0.5 s a word

    low = flag(check(data), "low_confidence")

    assert low["span_count"] == 31
    assert len(low["spans"]) == quality.MAX_SPANS
    assert low["spans"][:2] == [
        {"start": 0.0, "end": 5.5, "segment_ids": [0]},  # three stretches 0.5 s apart
        {"start": 8.0, "end": 9.5, "segment_ids": [0]},
    ]


@pytest.mark.parametrize("unknown", [None, float("nan"), "n/a", "missing"])
def test_words_without_a_probability_are_not_scored(unknown):
    probabilities: list[Any] = [0.1, 0.1, unknown, 0.1, 0.9, 0.9]
    data = with_probabilities(probabilities)
    if unknown == "missing":
        del data["segments"][0]["words"][2]["probability"]

    report = check(data)

    assert report["metrics"]["scored_word_count"] == 5
    assert report["metrics"]["word_count"] == 6
    assert report["metrics"]["mean_word_probability"] == 0.42
    assert "low_confidence" not in codes(report)  # the unknown word splits the run


def test_words_edited_by_a_person_are_not_scored():
    data = with_probabilities([0.1] * 5, edited=True)

    report = check(data)

    assert report["flags"] == []
    assert report["metrics"]["scored_word_count"] == 0
    assert report["metrics"]["mean_word_probability"] is None
    assert report["metrics"]["low_confidence_word_ratio"] is None


# --- speech_not_transcribed / no_speech_detected ---------------------------------------------


def test_speech_the_decoder_dropped_is_a_warning_with_its_longest_gaps():
    data = result(
        [segment(0, 0.0, 10.0, CLEAN[0]), segment(1, 30.0, 35.0, CLEAN[1])], duration=60.0
    )

    report = check(data, speech=50.0)

    dropped = flag(report, "speech_not_transcribed")
    assert dropped["severity"] == "warning"
    assert [(s["start"], s["end"]) for s in dropped["spans"]] == [(35.0, 60.0), (10.0, 30.0)]
    assert dropped["message"] == (
        "The transcript covers only 30% of the 50 seconds of speech detected: parts of the "
        "speech may be missing."
    )
    assert report["metrics"]["coverage"] == 0.3
    assert report["metrics"]["transcribed_seconds"] == 15.0
    assert quality_summary(report) == "1 warning: speech not transcribed (30% transcribed)."


@pytest.mark.parametrize(
    ("speech", "flagged"), [(20.0, False), (20.01, True), (9.99, False), (None, False)]
)
def test_coverage_threshold_and_minimum_speech(speech, flagged):
    data = result([segment(0, 0.0, 5.0, CLEAN[0]), segment(1, 6.0, 11.0, CLEAN[1])])

    assert ("speech_not_transcribed" in codes(check(data, speech=speech))) is flagged


def test_overlapping_segments_and_segments_past_the_end_count_once():
    data = result(
        [
            segment(0, 0.0, 10.0, CLEAN[0]),
            segment(1, 5.0, 12.0, CLEAN[1]),
            segment(2, 18.0, 40.0, "and more"),
        ],
        duration=20.0,
    )

    report = check(data, speech=14.0)

    assert report["metrics"]["transcribed_seconds"] == 14.0
    assert report["metrics"]["coverage"] == 1.0
    assert report["flags"] == []


def test_an_empty_transcript_is_a_no_speech_note():
    report = check(result([], duration=8.0), speech=None, declared=False)

    assert report["flags"] == [
        {
            "code": "no_speech_detected",
            "severity": "info",
            "message": "No speech was transcribed.",
            "spans": [],
            "span_count": 0,
        }
    ]
    assert report["metrics"]["word_count"] == 0
    assert report["metrics"]["mean_word_probability"] is None
    assert quality_summary(report) == "1 note: no speech detected."


def test_an_empty_transcript_of_much_speech_is_speech_not_transcribed():
    report = check(result([], duration=40.0), speech=30.0)

    assert codes(report) == ["speech_not_transcribed"]
    assert flag(report, "speech_not_transcribed")["spans"][0] == {
        "start": 0.0,
        "end": 40.0,
        "segment_ids": [],
    }


# --- uncertain_language -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "probability", "declared", "flagged"),
    [
        ("cy", 0.42, False, True),
        ("cy", 0.42, True, False),
        ("en", 0.5, False, False),
        ("en", 0.4999, False, True),
        ("", 0.0, False, False),
        ("en", None, False, False),
    ],
)
def test_uncertain_language_only_when_detected(language, probability, declared, flagged):
    data = result(sentences(CLEAN), language=language, language_probability=probability)

    report = check(data, declared=declared)

    assert ("uncertain_language" in codes(report)) is flagged
    if flagged and language == "cy":
        assert flag(report, "uncertain_language")["message"] == (
            'The language was detected as "cy" with only 42% confidence: the transcript may be '
            "in the wrong language."
        )
        assert quality_summary(report) == "1 warning: uncertain language (cy)."


# --- robustness, determinism, size ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"segments": None},
        {"segments": "oops", "duration": "long"},
        {"segments": [None, 3, "x", {}], "language": 5, "language_probability": "high"},
        {"segments": [{"start": None, "end": None, "text": None, "words": None}]},
        {"segments": [{"start": "nan", "end": float("inf"), "text": "hi", "words": [None, {}]}]},
        {"segments": [{"id": "seven", "start": 5, "end": 2, "text": " ok", "avg_logprob": None}]},
        {"segments": [{"start": 1, "end": 2, "words": [{"word": None, "start": "a", "end": -4}]}]},
        {"segments": [{"start": -5, "end": 3, "text": " a", "no_speech_prob": float("nan")}]},
        {"duration": float("nan"), "segments": [{"start": 0, "end": 1, "text": 7}]},
    ],
)
def test_odd_input_never_raises(data):
    report = check(data, speech=float("nan"), declared=False)

    assert "error" not in report
    assert report["version"] == 1
    json.dumps(report, allow_nan=False)  # no NaN or infinity reaches the stored JSON
    assert isinstance(quality_summary(report), str)


def test_a_result_that_is_not_a_mapping_gives_an_empty_report():
    report = check("not a result")  # type: ignore[arg-type]

    assert codes(report) == ["no_speech_detected"]
    assert report["metrics"]["segment_count"] == 0


def test_an_unexpected_error_is_logged_and_gives_no_flags(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(quality, "_segments", broken)

    report = check(result(sentences(CLEAN)))

    assert report == {"version": 1, "flags": [], "metrics": {}, "error": "analysis_failed"}
    assert "transcript_quality_failed" in caplog.text


def test_the_same_input_gives_the_same_output():
    data = result(
        sentences([CLEAN[0], "stop " * 12, CLEAN[1]], compression_ratio=2.6, probability=0.3),
        language_probability=0.3,
    )

    first = json.dumps(check(data, speech=90.0, declared=False))
    second = json.dumps(check(json.loads(json.dumps(data)), speech=90.0, declared=False))

    assert first == second
    assert codes(json.loads(first)) == [
        "repetition_loop",
        "suspected_hallucination",
        "low_confidence",
        "speech_not_transcribed",
        "uncertain_language",
    ]


def test_a_loop_is_found_in_a_four_hour_transcript():
    vocabulary = [f"word{i}" for i in range(500)]
    segments = []
    for i in range(4000):  # 40,000 words over four hours
        text = " ".join(vocabulary[(i * 7 + j * 13) % 500] for j in range(10))
        segments.append(segment(i, i * 3.6, i * 3.6 + 3.5, text))
    segments[2500] = segment(2500, 9000.0, 9003.5, "go on " * 6)
    segments[2501] = segment(2501, 9003.6, 9007.1, "go on " * 6)
    data = result(segments)

    report = check(data, speech=14000.0)

    assert codes(report) == ["repetition_loop"]
    span = flag(report, "repetition_loop")["spans"][0]
    assert (span["phrase"], span["repeats"], span["segment_ids"]) == ("go on", 12, [2500, 2501])
    assert report["metrics"]["word_count"] == 40004


# --- summary and helpers ----------------------------------------------------------------------


def test_the_summary_lists_warnings_then_notes():
    report = {
        "flags": [
            {"code": "repetition_loop", "severity": "warning", "spans": [{"start": 192.4}]},
            {"code": "low_confidence", "severity": "warning", "spans": []},
            {"code": "something_new", "severity": "info", "spans": []},
        ],
        "metrics": {"low_confidence_word_ratio": 0.1234},
    }

    assert quality_summary(report) == (
        "2 warnings: repetition loop at 00:03:12, low confidence on 12% of words; "
        "1 note: something new."
    )


@pytest.mark.parametrize("stored", [{}, None, {"flags": "x"}, {"flags": [None, 3]}, []])
def test_the_summary_of_a_malformed_report_is_clean(stored):
    assert quality_summary(stored) == "No problems found."


@pytest.mark.parametrize(
    ("engine_info", "seconds"),
    [
        ({"vad": True, "duration_after_vad": 31.5}, 31.5),
        ({"vad": False, "duration_after_vad": 60.0}, None),  # VAD off: the whole duration
        ({"vad": True, "duration_after_vad": 0.0}, None),
        ({"vad": True}, None),
        ({"vad": True, "duration_after_vad": math.nan}, None),
        ({}, None),
        (None, None),
    ],
)
def test_speech_seconds_come_from_the_vad_only(engine_info, seconds):
    assert speech_seconds_from(engine_info) == seconds


# --- the real engine --------------------------------------------------------------------------


@pytest.mark.slow
def test_clean_speech_transcribed_by_tiny_en_has_no_warnings(tiny_engine, speech):
    from tests.engines.conftest import ENGLISH_TEXT

    transcribed = tiny_engine.transcribe(
        speech.say(ENGLISH_TEXT), TranscriptionOptions(language="en")
    )
    data = transcribed.to_dict()
    engine_info = data.pop("engine_info")

    report = transcript_quality(
        data, speech_seconds=speech_seconds_from(engine_info), language_declared=True
    )

    assert [f["code"] for f in report["flags"] if f["severity"] == "warning"] == []
    assert report["metrics"]["word_count"] == len(transcribed.words) > 20
    assert report["metrics"]["coverage"] > 0.8
    assert report["metrics"]["mean_word_probability"] > 0.8


# ---- review fixes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["はい はい はい はい はい", "好的 好的 好的 好的 好的", "哈 哈 哈 哈 哈 哈 哈 哈 哈 哈"],
)
def test_backchannels_and_laughter_in_chinese_and_japanese_are_not_loops(text):
    """Each Han or kana character is a token; five "はい" are ten tokens but about four words."""
    report = check(result(sentences([text]), language="ja"))

    assert "repetition_loop" not in codes(report)


def test_chinese_loops_are_still_found():
    sentence = " ".join(["我们明天再见"] * 5)  # a 6-character phrase, 30 characters in all
    pair = " ".join(["好的"] * 13)  # 26 characters: about ten words

    report = check(result(sentences([sentence, pair], seconds=8.0), language="zh"))

    loops = flag(report, "repetition_loop")["spans"]
    assert [(span["phrase"], span["repeats"]) for span in loops] == [
        ("我 们 明 天 再 见", 5),
        ("好 的", 13),
    ]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [("สวัสดีครับ", "สวัสดีครับ"), ("नमस्ते दोस्तों", "नमस्ते दोस्तों")],
)
def test_phrases_in_scripts_with_combining_marks_are_kept_whole(text, phrase):
    looping = " ".join([text] * 12)

    report = check(result(sentences([looping], seconds=20.0)))

    assert flag(report, "repetition_loop")["spans"][0]["phrase"] == phrase


def test_a_word_repeated_in_segments_seconds_apart_is_not_a_loop():
    """A one-sided call: "Yes." ten times, each its own segment after a pause."""
    segments = [segment(i, i * 6.0, i * 6.0 + 0.6, "Yes.") for i in range(12)]

    assert "repetition_loop" not in codes(check(result(segments)))


def test_the_same_segments_back_to_back_are_a_loop():
    segments = [segment(i, i * 0.6, i * 0.6 + 0.6, "Yes.") for i in range(12)]

    assert flag(check(result(segments)), "repetition_loop")["spans"][0]["repeats"] == 12


def test_low_words_an_hour_apart_are_not_one_stretch():
    words = [
        {"start": 1.0, "end": 1.4, "word": " a", "probability": 0.2},
        {"start": 1.5, "end": 1.9, "word": " b", "probability": 0.2},
        {"start": 3600.0, "end": 3600.4, "word": " c", "probability": 0.2},
    ]
    data = result([segment(0, 0.0, 3601.0, "a b c", words=words)])

    assert "low_confidence" not in codes(check(data))


def test_thousands_of_adjacent_suspect_segments_are_one_capped_span():
    """The spans' segment ids are joined with a set: this took seconds, growing quadratically."""
    segments = [
        segment(i, i * 0.5, i * 0.5 + 0.5, "noise", avg_logprob=-1.5, probability=0.9)
        for i in range(40_000)
    ]

    suspect = flag(check(result(segments)), "suspected_hallucination")

    assert suspect["span_count"] == 1
    assert suspect["spans"][0]["segment_ids"] == list(range(50))
    assert (suspect["spans"][0]["start"], suspect["spans"][0]["end"]) == (0.0, 20_000.0)


def test_when_the_checks_fail_nothing_calls_the_transcript_clean(monkeypatch):
    monkeypatch.setattr(quality, "_quality", lambda *args: 1 / 0)

    report = check(result(sentences(CLEAN)))

    assert report["error"] == "analysis_failed"
    assert quality.warning_count(report) is None
    assert quality_summary(report) == "The automatic checks could not run."
