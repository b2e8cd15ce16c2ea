"""Lexical analytics on word lists whose numbers were computed by hand."""

from __future__ import annotations

import pytest

from apps.reports import analytics
from apps.reports.analytics import Word, tokens_of


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a a | a a: two full factors (TTR 0.5 <= 0.72 after each pair) -> 4 / 2.
        ("a a a a", 2.0),
        # a b a | b a b: TTR 2/3 after each third token -> 2 factors -> 6 / 2.
        ("a b a b a b", 3.0),
        # a b c a: TTR 0.75 never reaches 0.72; partial factor (1 - 0.75) / 0.28 = 0.892857
        # forwards and backwards -> 4 / 0.892857 = 4.48.
        ("a b c a", 4.48),
    ],
)
def test_mtld_matches_hand_computed_values(text, expected):
    assert analytics.mtld(text.split()) == pytest.approx(expected, abs=0.005)


def test_type_token_ratio_is_types_over_tokens():
    assert analytics.type_token_ratio(["the", "cat", "and", "the", "dog"]) == 0.8


def test_analyse_counts_words_rate_fillers_pauses_and_low_confidence():
    words = [
        Word(" Um,", 0.0, 0.5, 0.9),
        Word(" budget", 0.5, 1.0, 0.9),
        Word(" budget", 1.0, 1.5, 0.2),
        Word(" review", 1.5, 2.0, 0.3),
        Word(" you", 5.0, 5.5, 0.9),
        Word(" know", 5.5, 6.0, 0.9),
    ]

    result = analytics.analyse(words, bin_seconds=3, pause_seconds=2.0, low_confidence_below=0.5)

    assert result["word_count"] == 6
    assert result["speaking_seconds"] == 6.0
    assert result["words_per_minute"] == 60.0
    assert result["type_token_ratio"] == pytest.approx(5 / 6, abs=1e-4)
    assert result["filler_words"] == {"um": 1, "you know": 1}
    assert result["top_content_words"][0] == {"word": "budget", "count": 2}
    assert result["long_pauses"] == [{"start": 2.0, "end": 5.0, "duration": 3.0}]
    assert result["low_confidence_passages"] == [
        {"start": 1.0, "end": 2.0, "text": "budget review", "mean_probability": 0.25}
    ]
    assert [(b["words"], b["wpm"]) for b in result["words_per_minute_over_time"]] == [
        (4, 80.0),
        (2, 40.0),
    ]


def test_segments_without_word_timings_are_spread_evenly():
    words = analytics.words_from_segments([{"start": 0, "end": 4, "text": "one two three four"}])

    assert [(w.text, w.start, w.end) for w in words] == [
        ("one", 0, 1),
        ("two", 1, 2),
        ("three", 2, 3),
        ("four", 3, 4),
    ]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("don\u2019t stop", ["don't", "stop"]),  # a typographic apostrophe keeps the word whole
        ("'Hello,' she said", ["hello", "she", "said"]),  # quotes are not words
        ("$1,000,000 raised", ["1,000,000", "raised"]),  # one number, one word
        ("Stra\u00dfe STRASSE", ["strasse", "strasse"]),  # case-folded, not only lower-cased
        # Chinese and Japanese have no spaces between words: one token per character
        (
            "\u4eca\u5929\u5929\u6c14\u5f88\u597d",
            ["\u4eca", "\u5929", "\u5929", "\u6c14", "\u5f88", "\u597d"],
        ),
        (
            "\u6771\u4eac\u3078\u884c\u304fGPU2\u53f0",
            ["\u6771", "\u4eac", "\u3078", "\u884c", "\u304f", "gpu2", "\u53f0"],
        ),
        (
            "\ud55c\uad6d\uc5b4 \ubb38\uc7a5",
            ["\ud55c\uad6d\uc5b4", "\ubb38\uc7a5"],
        ),  # Korean is spaced: words
    ],
)
def test_words_are_counted_as_a_reader_would(text, tokens):
    assert tokens_of(text) == tokens


def test_wpm_bins_add_up_to_the_word_count_and_ignore_sub_second_spans():
    words = [
        Word("one two", 0.0, 1.0),
        Word("three", 30.0, 31.0),
        Word("four", 60.0, 60.0),  # starts on the last bin's boundary
    ]

    bins = analytics.wpm_over_time(words, 60)

    assert sum(b["words"] for b in bins) == 4
    assert analytics.wpm_over_time([Word("hi", 0.0, 0.0)], 60)[0]["wpm"] == 0.0
