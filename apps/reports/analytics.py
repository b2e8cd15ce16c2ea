"""Lexical analytics of a transcript, computed from its timed words.

Pure functions of a list of `Word`s (no database), so the numbers can be checked by hand.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from apps.audio_jobs.formats import stored_label, word_speakers

# A number with its separators ("1,000,000", "3.5") is one token; a word keeps its inner
# apostrophes ("don't") but not quotes around it ("'hello'").


def _combining_marks() -> str:
    """A character class body of every combining mark (Unicode categories Mn, Mc, Me): `\\w`
    leaves them out, which cut Hindi "नमस्ते" into "नमस" and "त" and Thai words at every vowel
    sign."""
    ranges: list[tuple[int, int]] = []
    for code in (*range(0x300, 0x20000), *range(0xE0100, 0xE01F0)):
        if unicodedata.category(chr(code)).startswith("M"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )


_WORD = rf"[\w{_combining_marks()}]"
_TOKEN = re.compile(rf"\d+(?:[.,]\d+)*|{_WORD}+(?:'{_WORD}+)*", re.UNICODE)
# Chinese and Japanese are written without spaces between words, and splitting them into words
# needs a dictionary: each Han, kana or CJK-compatibility character counts as one token, so rates
# are characters per minute, the usual measure of speaking rate in these languages.
_CJK = re.compile(
    "[\u3040-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0002fa1f]"
)
# Typographic apostrophes, as Whisper writes them in some languages and texts.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
MTLD_THRESHOLD = 0.72
FILLERS = {"um", "uh", "erm", "er", "ah", "hmm", "uhm", "mm", "mhm"}
FILLER_PHRASES = {("you", "know"), ("i", "mean")}
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each few for from further get got had hadn't has hasn't
    have haven't having he he'd he'll he's her here here's hers herself him himself his how
    how's i i'd i'll i'm i've if in into is isn't it it's its itself just let's like me more
    most mustn't my myself no nor not now of off on once only or other ought our ours
    ourselves out over own really same shan't she she'd she'll she's should shouldn't so some
    such than that that's the their theirs them themselves then there there's these they
    they'd they'll they're they've this those through to too under until up us very was wasn't
    we we'd we'll we're we've were weren't what what's when when's where where's which while
    who who's whom why why's will with won't would wouldn't yeah yes you you'd you'll you're
    you've your yours yourself yourselves okay ok oh well going gonna want know think thing
    things one also
    """.split()  # noqa: SIM905
)


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    probability: float = 1.0
    # The diarization label ("SPEAKER_00") the word is attributed to; None without diarization.
    speaker: str | None = None


def is_cjk_token(token: str) -> bool:
    """Whether `token` (from `tokens_of`) is one Chinese or Japanese character."""
    return len(token) == 1 and _CJK.match(token) is not None


def tokens_of(text: str) -> list[str]:
    """Words of `text`, case-folded ("Straße" and "STRASSE" are one word); each CJK character is
    a token of its own."""
    text = _CJK.sub(r" \g<0> ", (text or "").translate(_APOSTROPHES))
    return [t.casefold() for t in _TOKEN.findall(text)]


def segment_speaker(segment: dict[str, Any]) -> str | None:
    """The speaker a segment's line is shown under, as the transcript's renders show it
    (`apps.audio_jobs.formats.word_speakers`): its first word's, else its own label."""
    words = segment.get("words") or []
    return next((s for s in word_speakers(segment, words) if s is not None), None) or (
        stored_label(segment.get("speaker"))
    )


def words_from_segments(segments: Iterable[dict[str, Any]]) -> list[Word]:
    """Timed words of the stored segments (spread evenly when a segment has no word timings),
    each with its speaker when the transcript was diarized."""
    words: list[Word] = []
    for segment in segments:
        seg_words = segment.get("words") or []
        if seg_words:
            words.extend(
                Word(
                    w.get("word", ""),
                    float(w.get("start", 0)),
                    float(w.get("end", 0)),
                    float(w.get("probability", 1.0)),
                    speaker,
                )
                for w, speaker in zip(seg_words, word_speakers(segment, seg_words), strict=True)
            )
            continue
        parts = (segment.get("text") or "").split()
        start, end = float(segment.get("start", 0)), float(segment.get("end", 0))
        step = (end - start) / len(parts) if parts else 0
        speaker = stored_label(segment.get("speaker"))
        words.extend(
            Word(p, start + i * step, start + (i + 1) * step, speaker=speaker)
            for i, p in enumerate(parts)
        )
    return words


def type_token_ratio(tokens: list[str]) -> float:
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def _mtld_pass(tokens: list[str], threshold: float) -> float:
    factors = 0.0
    types: set[str] = set()
    count = 0
    for token in tokens:
        count += 1
        types.add(token)
        if len(types) / count <= threshold:
            factors += 1
            types, count = set(), 0
    if count:
        factors += (1 - len(types) / count) / (1 - threshold)
    # A text that never falls to the threshold has no factor: MTLD is its length.
    return len(tokens) / factors if factors else float(len(tokens))


def mtld(tokens: list[str], threshold: float = MTLD_THRESHOLD) -> float:
    """Measure of Textual Lexical Diversity (McCarthy & Jarvis 2010): forward/backward mean."""
    if not tokens:
        return 0.0
    return (_mtld_pass(tokens, threshold) + _mtld_pass(tokens[::-1], threshold)) / 2


def words_per_minute(count: int, seconds: float) -> float:
    return round(count / (seconds / 60), 1) if seconds > 0 else 0.0


def wpm_over_time(words: list[Word], bin_seconds: int) -> list[dict[str, float]]:
    if not words:
        return []
    last = max(w.end for w in words)
    bins = max(1, math.ceil(last / bin_seconds))
    # Tokens, as the word count counts them; a word starting on the last boundary (or past it)
    # belongs to the last bin rather than to none.
    counts: Counter[int] = Counter()
    for w in words:
        counts[min(int(w.start // bin_seconds), bins - 1)] += len(tokens_of(w.text))
    out = []
    for index in range(bins):
        start = index * bin_seconds
        length = min(bin_seconds, max(last - start, 0.0))
        out.append(
            {
                "start": float(start),
                "end": round(start + length, 2),
                "words": counts.get(index, 0),
                # A rate over less than a second is noise (words all at 0 s gave 120000 wpm).
                "wpm": words_per_minute(counts.get(index, 0), length) if length >= 1 else 0.0,
            }
        )
    return out


def filler_counts(tokens: list[str]) -> dict[str, int]:
    counts: Counter[str] = Counter(t for t in tokens if t in FILLERS)
    for pair in pairwise(tokens):
        if pair in FILLER_PHRASES:
            counts[" ".join(pair)] += 1
    return dict(counts.most_common())


def top_content_words(tokens: list[str], limit: int = 20) -> list[dict[str, Any]]:
    counts = Counter(
        t
        for t in tokens
        if t not in STOPWORDS and t not in FILLERS and len(t) > 2 and not t.isdigit()
    )
    return [{"word": w, "count": c} for w, c in counts.most_common(limit)]


def long_pauses(words: list[Word], min_seconds: float) -> list[dict[str, float]]:
    pauses = []
    for previous, current in pairwise(words):
        gap = current.start - previous.end
        if gap >= min_seconds:
            pauses.append(
                {
                    "start": round(previous.end, 2),
                    "end": round(current.start, 2),
                    "duration": round(gap, 2),
                }
            )
    return pauses


def low_confidence_passages(words: list[Word], below: float) -> list[dict[str, Any]]:
    passages: list[dict[str, Any]] = []
    run: list[Word] = []
    for word in [*words, None]:
        if word is not None and word.probability < below:
            run.append(word)
            continue
        if run:
            passages.append(
                {
                    "start": round(run[0].start, 2),
                    "end": round(run[-1].end, 2),
                    "text": " ".join(w.text.strip() for w in run),
                    "mean_probability": round(sum(w.probability for w in run) / len(run), 3),
                }
            )
            run = []
    return passages


def analyse(
    words: list[Word],
    *,
    bin_seconds: int = 60,
    pause_seconds: float = 2.0,
    low_confidence_below: float = 0.5,
) -> dict[str, Any]:
    tokens = [t for w in words for t in tokens_of(w.text)]
    speaking = (words[-1].end - words[0].start) if words else 0.0
    return {
        "word_count": len(tokens),
        "unique_words": len(set(tokens)),
        "speaking_seconds": round(speaking, 2),
        "words_per_minute": words_per_minute(len(tokens), speaking),
        "words_per_minute_over_time": wpm_over_time(words, bin_seconds),
        "type_token_ratio": round(type_token_ratio(tokens), 4),
        "mtld": round(mtld(tokens), 2),
        "top_content_words": top_content_words(tokens),
        "filler_words": filler_counts(tokens),
        "filler_word_total": sum(filler_counts(tokens).values()),
        "long_pauses": long_pauses(words, pause_seconds),
        "low_confidence_passages": low_confidence_passages(words, low_confidence_below),
    }


# ---- Speakers (diarized transcripts) ------------------------------------------------------------
def speaker_turns(words: list[Word]) -> list[tuple[str, list[Word]]]:
    """The turns of a diarized transcript, in order: maximal runs of consecutive words attributed
    to one speaker. Only words with a token count (a blank or punctuation-only word neither
    starts nor ends a turn); a word without a speaker ends the turn before it and starts none. A
    speaker's pause stays inside their turn: a turn ends only when someone else speaks."""
    turns: list[tuple[str, list[Word]]] = []
    previous: str | None = None
    for word in words:
        if not tokens_of(word.text):
            continue
        if word.speaker is not None:
            if word.speaker == previous:
                turns[-1][1].append(word)
            else:
                turns.append((word.speaker, [word]))
        previous = word.speaker
    return turns


def speaker_analytics(words: list[Word]) -> list[dict[str, Any]]:
    """Per speaker (by label, in the order they first speak; [] when no word has a speaker):

    - talk_seconds: the sum of their turns (`speaker_turns`), each from its first word's start
      to its last word's end, so pauses inside a turn count and silences between turns do not;
      talk_share_percent: that over all speakers' talk time;
    - word_count: their tokens (as the transcript's word count counts them);
      words_per_minute: over their talk time (None under a second of it: noise);
    - turns, and longest_monologue_seconds: their longest turn;
    - type_token_ratio and mtld of their tokens; filler_word_total: their filler words, a
      phrase ("you know") counted within one turn, never across someone else's words.
    """
    runs_of: dict[str, list[list[Word]]] = {}
    for speaker, run in speaker_turns(words):
        runs_of.setdefault(speaker, []).append(run)
    spans_of = {
        speaker: [max(run[-1].end - run[0].start, 0.0) for run in runs]
        for speaker, runs in runs_of.items()
    }
    total = sum(sum(spans) for spans in spans_of.values())
    rows = []
    for speaker, runs in runs_of.items():
        turn_tokens = [[t for w in run for t in tokens_of(w.text)] for run in runs]
        tokens = [t for turn in turn_tokens for t in turn]
        seconds = sum(spans_of[speaker])
        rows.append(
            {
                "label": speaker,
                "talk_seconds": round(seconds, 2),
                "talk_share_percent": round(100 * seconds / total, 1) if total > 0 else 0.0,
                "word_count": len(tokens),
                "words_per_minute": words_per_minute(len(tokens), seconds)
                if seconds >= 1
                else None,
                "turns": len(runs),
                "longest_monologue_seconds": round(max(spans_of[speaker]), 2),
                "type_token_ratio": round(type_token_ratio(tokens), 4),
                "mtld": round(mtld(tokens), 2),
                "filler_word_total": sum(sum(filler_counts(t).values()) for t in turn_tokens),
            }
        )
    return rows
