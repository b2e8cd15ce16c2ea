"""The shared result clean-up, options validation and progress reporting (no model needed)."""

from __future__ import annotations

import json

import pytest

from workers.engines.base import (
    ProgressReporter,
    Segment,
    TranscriptionOptions,
    TranscriptionResult,
    Word,
    check_model_language,
    clean_text,
    finalize_segments,
    join_text,
    reported_language,
)
from workers.engines.errors import ProfileError, TranscriptionCancelled


def _segment(start, end, text, words=()):
    return Segment(
        id=99,
        start=start,
        end=end,
        text=text,
        avg_logprob=-0.2,
        no_speech_prob=0.01,
        words=[Word(*w) for w in words],
    )


def test_clean_text_removes_replacement_and_control_characters():
    assert clean_text(" caf\ufffd au lait") == " caf au lait"
    assert clean_text(" un \ufffd deux") == " un deux"
    assert clean_text(" nul\x00 byte\x07") == " nul byte"
    assert clean_text(" line\nkept") == " line\nkept"


def test_finalize_drops_segments_left_empty_and_renumbers():
    segments = [
        _segment(0.0, 1.0, " Hello."),
        _segment(1.0, 2.0, " \ufffd\ufffd"),
        _segment(2.0, 3.0, " Bonjour \ufffdà tous."),
    ]

    final = finalize_segments(segments, duration=3.0)

    assert [s.id for s in final] == [0, 1]
    assert [s.text for s in final] == [" Hello.", " Bonjour à tous."]
    assert join_text(final) == "Hello. Bonjour à tous."


def test_finalize_makes_timestamps_monotonic_and_clamped():
    segments = [
        _segment(-0.5, 2.0, " one", [(-0.5, 0.4, " one", 0.9)]),
        _segment(1.5, 1.2, " two", [(1.5, 1.9, " two", 0.9)]),
        _segment(3.0, 9.0, " three", [(3.0, 3.5, " three", 0.9), (8.0, 12.0, " more", 0.5)]),
    ]

    final = finalize_segments(segments, duration=5.0)

    assert [(s.start, s.end) for s in final] == [(0.0, 2.0), (2.0, 2.0), (3.0, 5.0)]
    assert [(w.start, w.end) for w in final[0].words] == [(0.0, 0.4)]
    assert [(w.start, w.end) for w in final[1].words] == [(2.0, 2.0)]
    assert [(w.start, w.end) for w in final[2].words] == [(3.0, 3.5), (5.0, 5.0)]


def test_finalize_replaces_non_finite_numbers():
    segments = [_segment(0.0, float("nan"), " x", [(0.0, float("inf"), " x", float("nan"))])]

    final = finalize_segments(segments, duration=2.0)

    assert (final[0].start, final[0].end) == (0.0, 0.0)
    assert final[0].words[0].probability == 0.0


def test_result_round_trips_through_json():
    result = TranscriptionResult(
        text="Hello.",
        language="en",
        language_probability=1.0,
        duration=1.5,
        segments=finalize_segments(
            [_segment(0, 1, " Hello.", [(0, 1, " Hello.", 0.9)])], duration=1.5
        ),
        engine_info={"engine": "faster-whisper"},
    )

    stored = json.loads(json.dumps(result.to_dict()))
    restored = TranscriptionResult.from_dict(stored)

    assert restored == result
    assert restored.words[0].word == " Hello."


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "summarise"}, "task"),
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 11}, "beam_size"),
        ({"initial_prompt": "x" * 1001}, "initial_prompt"),
    ],
)
def test_invalid_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TranscriptionOptions(**kwargs)


def test_options_normalise_language_and_prompt():
    options = TranscriptionOptions(language="EN-us", initial_prompt="   ")

    assert options.language == "en"
    assert options.initial_prompt is None


def test_english_only_model_needs_english_stated():
    check_model_language("tiny.en", True, TranscriptionOptions(language="en"))
    check_model_language("base", False, TranscriptionOptions())

    with pytest.raises(ProfileError, match="auto-detect"):
        check_model_language("tiny.en", True, TranscriptionOptions())
    with pytest.raises(ProfileError, match="'fr'"):
        check_model_language("tiny.en", True, TranscriptionOptions(language="fr"))


def test_progress_reporter_throttles_and_always_reports_the_end():
    calls = []
    reporter = ProgressReporter(10.0, lambda done, total: calls.append((done, total)), None)

    for seconds in (0.2, 0.5, 1.5, 1.6, 4.0, 3.0, 12.0):
        reporter.advance(seconds)
    reporter.finish()

    assert calls == [(0.2, 10.0), (1.5, 10.0), (4.0, 10.0), (10.0, 10.0)]


def test_progress_reporter_raises_when_cancelled():
    reporter = ProgressReporter(10.0, None, lambda: True)

    with pytest.raises(TranscriptionCancelled) as caught:
        reporter.advance(3.0)

    assert caught.value.seconds_done == 3.0
    assert caught.value.code == "cancelled"


def test_the_reported_language_is_the_requested_one_or_a_detection_that_heard_speech():
    spoken = [Segment(0, 0.0, 1.0, " Hello.", -0.2, 0.1)]

    assert reported_language("fr", "fr", 0.42, []) == ("fr", 1.0)
    assert reported_language(None, "de", 0.93, spoken) == ("de", 0.93)
    assert reported_language(None, "en", 0.56, []) == ("", 0.0)
