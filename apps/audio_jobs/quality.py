"""Automatic quality checks on a machine transcript: Whisper's known failure modes, flagged.

A pure function of a stored result (``TranscriptionResult.to_dict()``, no database), run by the
worker after transcription. It must never fail a job: every value is read defensively (missing,
None, NaN, strings, unsorted or overlapping segments), and an unexpected error is logged and
gives a result with no flags. It runs in near-linear time (40k words well under a second).

Checks, in the order their flags appear:

- ``repetition_loop``: a phrase of 1-8 normalised words repeated back to back many times (within
  or across segments), or a whole segment repeated back to back: the decoder got stuck.
- ``suspected_hallucination``: segments the decoder itself was unsure of (Whisper's compression
  ratio and log-probability thresholds, a high no-speech probability with text), and Whisper's
  well-known stock phrases ("Thank you for watching.") on a segment that looks like non-speech.
- ``low_confidence``: stretches of words the model gave low probability.
- ``speech_not_transcribed``: the VAD heard much more speech than the segments cover.
- ``no_speech_detected`` (info): an empty transcript.
- ``uncertain_language``: a detected (not declared) language with low probability.

Thresholds were tuned on tiny.en and base output for espeak-ng speech, silence, tones, noise
and long pauses, with and without VAD.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from apps.reports.analytics import is_cjk_token, tokens_of

logger = logging.getLogger(__name__)

VERSION = 1
WARNING, INFO = "warning", "info"
# Every flag code, in the order flags appear.
FLAG_CODES = (
    "repetition_loop",
    "suspected_hallucination",
    "low_confidence",
    "speech_not_transcribed",
    "no_speech_detected",
    "uncertain_language",
)

# --- repetition_loop -----------------------------------------------------------------------
# Longest phrase looked for: Whisper loops on a sentence fragment, rarely on more than 8 words.
LOOP_MAX_PHRASE_WORDS = 8
# A phrase must come back at least this often in a row: "no no no", "very very", a chorus line
# sung three times and "let it be" four times are speech; five identical phrases in a row rarely
# are, while a loop runs on to the end of its 30-second window (a long phrase looping fewer
# times inside one segment is caught by its compression ratio, across segments by
# SEGMENT_LOOP_MIN_REPEATS).
LOOP_MIN_REPEATS = 5
# ... and the repeats must add up to this many words, so a single word needs 10 in a row
# ("ha ha ha ha ha ha" laughter and "bye bye bye" stay unflagged).
LOOP_MIN_WORDS = 10
# A whole segment repeated this often back to back (with LOOP_MIN_WORDS words in all) is the
# decoder re-emitting its previous window: a speaker repeating a sentence does it once.
SEGMENT_LOOP_MIN_REPEATS = 3

# --- suspected_hallucination ---------------------------------------------------------------
# Whisper's own compression_ratio_threshold: above it the text is too repetitive to be speech.
COMPRESSION_RATIO_MAX = 2.4
# Whisper's own log_prob_threshold: below it the decoder retries at a higher temperature; a
# segment still below it after every fallback is one the decoder failed on.
AVG_LOGPROB_MIN = -1.0
# Whisper's no_speech_threshold: above it the model thinks the window holds no speech. Real
# speech after a long pause reached 0.46 (tiny.en), text invented over silence 0.72-0.95.
NO_SPEECH_PROB = 0.6
# Above this the model is sure enough on its own, whatever the words' probabilities.
NO_SPEECH_PROB_CERTAIN = 0.8
# A segment whose words average under this (or, without word probabilities, whose avg_logprob
# is under WEAK_AVG_LOGPROB) is weak: confident speech averaged 0.85-0.95 on tiny.en.
WEAK_SEGMENT_WORD_PROBABILITY = 0.5
WEAK_AVG_LOGPROB = -0.7
# Whisper's stock phrases from its subtitle training data, which it writes over silence, music
# and noise. Kept small: only phrases that are a common hallucination and rare as a segment of
# their own in real speech. Matched on normalised words (case and punctuation ignored), and only
# on a segment that looks like non-speech, never in confident speech.
# The whole segment is one of these:
HALLUCINATION_SEGMENTS = frozenset({("you",), ("thank", "you"), ("thanks",), ("bye",)})
# The segment contains one of these:
HALLUCINATION_PHRASES = (
    ("thank", "you", "for", "watching"),
    ("thanks", "for", "watching"),
    ("please", "subscribe"),
    ("subscribe", "to", "my", "channel"),
    ("subtitles", "by", "the", "amara", "org", "community"),
    ("amara", "org"),
)

# --- low_confidence ------------------------------------------------------------------------
# A word under this the model gave less than even odds.
LOW_WORD_PROBABILITY = 0.5
# A stretch needs this many low words in a row: single ones are common in clean speech (tiny.en
# gave "finance" 0.21 in a sentence it got right) and not worth a flag.
LOW_RUN_MIN_WORDS = 3
# When this share of the scored words is low, the flag is a warning, not a note...
LOW_CONFIDENCE_WARNING_RATIO = 0.15
# ... provided there are enough scored words for a share to mean something.
LOW_CONFIDENCE_MIN_WORDS = 20

# --- speech_not_transcribed ----------------------------------------------------------------
# Below this much VAD speech a short clip's padding and pauses dominate the ratio.
SPEECH_MIN_SECONDS = 10.0
# Segments must cover at least this share of the VAD's speech. The VAD pads speech and segments
# leave out pauses (clean speech covered 0.89), and segments over long pauses span them (over 1).
COVERAGE_MIN = 0.5
# Untranscribed stretches of at least this length are reported as the places to listen to.
UNTRANSCRIBED_GAP_SECONDS = 5.0

# --- uncertain_language --------------------------------------------------------------------
# Under even odds the other languages together were likelier; base detected espeak English,
# French, German and Spanish at 0.69-0.98, and silence as Welsh at 0.42.
LANGUAGE_PROBABILITY_MIN = 0.5

# --- spans ---------------------------------------------------------------------------------
MAX_SPANS = 20  # per flag; span_count says how many there were
MAX_SEGMENT_IDS = 50  # per span: a loop may run over hundreds of segments
SPAN_JOIN_SECONDS = 1.0  # spans of one flag closer than this are one place to listen to
# A pause longer than this between two segments (or two low words) ends a loop (or a stretch):
# a decoder's loop runs on without a pause, while "Yes." said ten times in a one-sided phone call
# comes in segments seconds apart, and two unsure words an hour apart are not one stretch.
RUN_MAX_GAP_SECONDS = 3.0
# Chinese and Japanese are tokenised one character at a time (apps.reports.analytics): such a
# token weighs this much of a word in the loop thresholds (a word is 2-3 characters), so the
# backchannel "はい" said five times or laughter "哈" ten times is not a loop.
CJK_TOKEN_WEIGHT = 0.4


@dataclass
class _Segment:
    id: int
    start: float
    end: float
    tokens: list[str]
    token_times: list[tuple[float, float]]
    word_count: int
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float | None
    word_probabilities: list[float | None] = field(default_factory=list)
    word_times: list[tuple[float, float]] = field(default_factory=list)

    @property
    def mean_word_probability(self) -> float | None:
        known = [p for p in self.word_probabilities if p is not None]
        return sum(known) / len(known) if known else None


@dataclass
class _Span:
    start: float
    end: float
    segment_ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


def transcript_quality(
    result: Mapping[str, Any], *, speech_seconds: float | None, language_declared: bool
) -> dict[str, Any]:
    """Flags and metrics of a stored transcription result.

    ``speech_seconds`` is the speech the VAD kept (``speech_seconds_from``), None when unknown;
    ``language_declared`` is true when the user chose the language (no detection to doubt).
    Returns ``{"version", "flags": [{"code", "severity", "message", "spans", "span_count"}],
    "metrics"}``, JSON-serialisable and the same for the same input.
    """
    try:
        return _quality(result, speech_seconds, language_declared)
    except Exception:  # a bug here must not fail the job the transcript belongs to
        logger.exception("transcript_quality_failed")
        return {"version": VERSION, "flags": [], "metrics": {}, "error": "analysis_failed"}


def speech_seconds_from(engine_info: Mapping[str, Any] | None) -> float | None:
    """The seconds of speech the VAD kept, from a result's ``engine_info``; None when VAD was off
    (faster-whisper then reports the whole duration) or the number is unknown."""
    if not isinstance(engine_info, Mapping) or not engine_info.get("vad"):
        return None
    seconds = _number(engine_info.get("duration_after_vad"))
    return seconds if seconds is not None and seconds > 0 else None


def warning_count(quality: Mapping[str, Any]) -> int | None:
    """How many warning flags the checks raised (what the job list filters on); None when the
    checks could not run, so a transcript nobody checked is never listed as clean."""
    if not isinstance(quality, Mapping) or quality.get("error"):
        return None
    flags = _list(quality.get("flags"))
    return sum(1 for flag in flags if isinstance(flag, Mapping) and flag.get("severity") == WARNING)


def quality_summary(quality: Mapping[str, Any]) -> str:
    """One line for emails and reports: "2 warnings: repetition loop at 00:03:12, low
    confidence on 12% of words." or "No problems found."."""
    quality = quality if isinstance(quality, Mapping) else {}
    if quality.get("error"):
        return "The automatic checks could not run."
    flags = _list(quality.get("flags"))
    metrics = quality.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else {}
    parts: dict[str, list[str]] = {WARNING: [], INFO: []}
    for flag in flags:
        if isinstance(flag, Mapping):
            severity = WARNING if flag.get("severity") == WARNING else INFO
            parts[severity].append(_flag_phrase(flag, metrics))
    if not parts[WARNING] and not parts[INFO]:
        return "No problems found."
    lines = []
    for severity, noun in ((WARNING, "warning"), (INFO, "note")):
        if parts[severity]:
            count = len(parts[severity])
            lines.append(f"{count} {noun}{'s' if count > 1 else ''}: {', '.join(parts[severity])}")
    return "; ".join(lines) + "."


# ---------------------------------------------------------------------------------------------
# Reading the result
# ---------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, None, NaN, infinite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _probability(word: Mapping[str, Any]) -> float | None:
    """A machine word's probability; None when unknown or when a person edited the word."""
    if word.get("edited"):
        return None
    value = _number(word.get("probability"))
    return None if value is None else min(max(value, 0.0), 1.0)


def _segments(result: Mapping[str, Any], duration: float | None) -> list[_Segment]:
    """The segments in time order (stable), times clipped to the audio, words tokenised."""
    segments: list[_Segment] = []
    for index, item in enumerate(_list(result.get("segments"))):
        if not isinstance(item, Mapping):
            continue
        start = _number(item.get("start"))
        end = _number(item.get("end"))
        start = start if start is not None else (end if end is not None else 0.0)
        start, end = _clip(start, duration), _clip(end if end is not None else start, duration)
        end = max(end, start)
        seg_id = _number(item.get("id"))
        segment = _Segment(
            id=int(seg_id) if seg_id is not None and seg_id.is_integer() else index,
            start=start,
            end=end,
            tokens=[],
            token_times=[],
            word_count=0,
            avg_logprob=_number(item.get("avg_logprob")),
            no_speech_prob=_number(item.get("no_speech_prob")),
            compression_ratio=_number(item.get("compression_ratio")),
        )
        words = [w for w in _list(item.get("words")) if isinstance(w, Mapping)]
        for word in words:
            w_start = _number(word.get("start"))
            w_start = _clip(start if w_start is None else w_start, duration)
            w_end = _number(word.get("end"))
            w_end = max(_clip(w_start if w_end is None else w_end, duration), w_start)
            segment.word_probabilities.append(_probability(word))
            segment.word_times.append((w_start, w_end))
            for token in tokens_of(str(word.get("word") or "")):
                segment.tokens.append(token)
                segment.token_times.append((w_start, w_end))
        text = item.get("text")
        text = text if isinstance(text, str) else ""
        if not segment.tokens:  # no word timings: the text's words spread over the segment
            segment.tokens = tokens_of(text)
            step = (end - start) / len(segment.tokens) if segment.tokens else 0.0
            segment.token_times = [
                (start + i * step, start + (i + 1) * step) for i in range(len(segment.tokens))
            ]
        segment.word_count = len(words) or len(segment.tokens)
        if segment.compression_ratio is None and text.strip():
            segment.compression_ratio = _compression_ratio(text)
        segments.append(segment)
    segments.sort(key=lambda s: s.start)  # stable: equal starts keep their stored order
    return segments


def _clip(value: float, duration: float | None) -> float:
    value = max(value, 0.0)
    return min(value, duration) if duration else value


def _compression_ratio(text: str) -> float:
    """Whisper's measure: UTF-8 length over zlib-compressed length."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


def _quality(
    result: Mapping[str, Any], speech_seconds: float | None, language_declared: bool
) -> dict[str, Any]:
    result = result if isinstance(result, Mapping) else {}
    duration = _number(result.get("duration"))
    duration = duration if duration is not None and duration > 0 else None
    segments = _segments(result, duration)
    speech = _number(speech_seconds)
    speech = speech if speech is not None and speech > 0 else None

    flags: list[dict[str, Any]] = []
    flagged_ids: set[int] = set()

    def add(code: str, severity: str, message: str, spans: list[_Span]) -> None:
        if severity == WARNING:
            flagged_ids.update(i for span in spans for i in span.segment_ids)
        flags.append(
            {
                "code": code,
                "severity": severity,
                "message": message,
                "spans": [_span_dict(span) for span in spans[:MAX_SPANS]],
                "span_count": len(spans),
            }
        )

    loops = _repetition_loops(segments)
    if loops:
        first = loops[0].extra
        more = f" (and {len(loops) - 1} more)" if len(loops) > 1 else ""
        add(
            "repetition_loop",
            WARNING,
            f'"{first["phrase"]}" is repeated {first["repeats"]} times in a row at '
            f"{_clock(loops[0].start)}{more}: the decoder may have got stuck in a loop.",
            loops,
        )

    invented = _hallucinations(segments)
    if invented:
        count = sum(len(span.segment_ids) for span in invented)
        add(
            "suspected_hallucination",
            WARNING,
            f"{count} segment{'s' if count > 1 else ''} may be text invented over silence, "
            f"music or noise, the first at {_clock(invented[0].start)}.",
            invented,
        )

    probabilities = [p for s in segments for p in s.word_probabilities if p is not None]
    low_ratio = (
        sum(p < LOW_WORD_PROBABILITY for p in probabilities) / len(probabilities)
        if probabilities
        else None
    )
    runs = _low_confidence_runs(segments)
    warn_low = (
        low_ratio is not None
        and low_ratio >= LOW_CONFIDENCE_WARNING_RATIO
        and len(probabilities) >= LOW_CONFIDENCE_MIN_WORDS
    )
    if runs or warn_low:
        stretches = f", in {len(runs)} stretch{'es' if len(runs) > 1 else ''}" if runs else ""
        add(
            "low_confidence",
            WARNING if warn_low else INFO,
            f"{_percent(low_ratio or 0.0)} of words were recognised with low confidence "
            f"(probability under {LOW_WORD_PROBABILITY}){stretches}.",
            runs,
        )

    covered, transcribed = _covered(segments)
    coverage = min(transcribed / speech, 1.0) if speech else None
    has_text = any(s.tokens for s in segments)
    if speech is not None and speech >= SPEECH_MIN_SECONDS and (coverage or 0.0) < COVERAGE_MIN:
        add(
            "speech_not_transcribed",
            WARNING,
            f"The transcript covers only {_percent(coverage or 0.0)} of the {speech:.0f} seconds "
            "of speech detected: parts of the speech may be missing.",
            _gaps(covered, duration or (covered[-1][1] if covered else 0.0)),
        )
    elif not has_text:
        add("no_speech_detected", INFO, "No speech was transcribed.", [])

    language = result.get("language") if isinstance(result.get("language"), str) else ""
    language_probability = _number(result.get("language_probability"))
    if (
        not language_declared
        and language
        and language_probability is not None
        and language_probability < LANGUAGE_PROBABILITY_MIN
    ):
        add(
            "uncertain_language",
            WARNING,
            f'The language was detected as "{language}" with only '
            f"{_percent(language_probability)} confidence: the transcript may be in the wrong "
            "language.",
            [],
        )

    return {
        "version": VERSION,
        "flags": flags,
        "metrics": {
            "segment_count": len(segments),
            "word_count": sum(s.word_count for s in segments),
            "scored_word_count": len(probabilities),
            "mean_word_probability": _round(
                sum(probabilities) / len(probabilities) if probabilities else None
            ),
            "low_confidence_word_ratio": _round(low_ratio),
            "transcribed_seconds": round(transcribed, 3),
            "speech_seconds": None if speech is None else round(speech, 3),
            "coverage": _round(coverage),
            "segments_flagged": len(flagged_ids),
            "language": language,
            "language_probability": _round(language_probability),
        },
    }


def _repetition_loops(segments: list[_Segment]) -> list[_Span]:
    """Runs of a phrase repeated back to back, found per phrase length in one pass each."""
    # One token stream, with a token matching no other (a NUL no word holds, and its position)
    # wherever a pause of RUN_MAX_GAP_SECONDS separates two segments: no loop runs across it.
    tokens: list[str] = []
    times: list[tuple[float, float]] = []
    owner: list[int] = []
    starts: list[int] = []  # each segment's first position in the stream
    for index, segment in enumerate(segments):
        if index and segment.start - segments[index - 1].end > RUN_MAX_GAP_SECONDS:
            tokens.append(f"\0{len(tokens)}")
            times.append((segments[index - 1].end, segment.start))
            owner.append(segment.id)
        starts.append(len(tokens))
        tokens.extend(segment.tokens)
        times.extend(segment.token_times)
        owner.extend(segment.id for _ in segment.tokens)
    weights = [CJK_TOKEN_WEIGHT if is_cjk_token(t) else 1.0 for t in tokens]
    # (first token, last token, phrase length, repeats)
    found: list[tuple[int, int, int, int]] = []
    n = len(tokens)
    for k in range(1, LOOP_MAX_PHRASE_WORDS + 1):
        i = 0
        while i + k < n:
            if tokens[i] != tokens[i + k]:
                i += 1
                continue
            j = i
            while j + k < n and tokens[j] == tokens[j + k]:
                j += 1
            repeats = (j - i + k) // k  # tokens[i : j + k] repeats a k-word phrase
            # A phrase that itself repeats a shorter one ("no no") needs more words than the
            # shorter one does, so each loop is found first at its own phrase length.
            phrase_words = sum(weights[i : i + k])
            needed = max(LOOP_MIN_REPEATS, math.ceil(LOOP_MIN_WORDS / phrase_words))
            if repeats >= needed:
                found.append((i, i + repeats * k - 1, k, repeats))
            i = j + 1
    for index, segment in enumerate(segments):  # whole segments repeated back to back
        if segment.tokens and (index == 0 or segments[index - 1].tokens != segment.tokens):
            count = 1
            while (
                index + count < len(segments)
                and segments[index + count].tokens == segment.tokens
                and segments[index + count].start - segments[index + count - 1].end
                <= RUN_MAX_GAP_SECONDS
            ):
                count += 1
            k = len(segment.tokens)
            start = starts[index]
            words = count * sum(weights[start : start + k])
            if count >= SEGMENT_LOOP_MIN_REPEATS and words >= LOOP_MIN_WORDS:
                found.append((start, starts[index + count - 1] + k - 1, k, count))

    spans: list[_Span] = []
    best: tuple[int, int, int, int] | None = None
    end = -1
    for loop in sorted(found, key=lambda f: (f[0], f[2])):
        if best is not None and loop[0] <= end:  # overlaps the current loop: one place
            end = max(end, loop[1])
            if loop[1] - loop[0] > best[1] - best[0]:
                best = loop
            continue
        if best is not None:
            spans.append(_loop_span(best, end, tokens, times, owner))
        best, end = loop, loop[1]
    if best is not None:
        spans.append(_loop_span(best, end, tokens, times, owner))
    return spans


def _loop_span(
    loop: tuple[int, int, int, int],
    end: int,
    tokens: list[str],
    times: list[tuple[float, float]],
    owner: list[int],
) -> _Span:
    first, _, k, repeats = loop
    ids = list(dict.fromkeys(owner[first : end + 1]))
    phrase = " ".join(tokens[first : first + k])
    phrase = phrase if len(phrase) <= 80 else phrase[:79] + "…"
    return _Span(times[first][0], times[end][1], ids, {"phrase": phrase, "repeats": repeats})


def _weak(segment: _Segment) -> bool:
    mean = segment.mean_word_probability
    if mean is not None:
        return mean < WEAK_SEGMENT_WORD_PROBABILITY
    return segment.avg_logprob is not None and segment.avg_logprob < WEAK_AVG_LOGPROB


def _stock_phrase(tokens: list[str]) -> bool:
    if tuple(tokens) in HALLUCINATION_SEGMENTS:
        return True
    return any(
        tuple(tokens[i : i + len(phrase)]) == phrase
        for phrase in HALLUCINATION_PHRASES
        for i in range(len(tokens) - len(phrase) + 1)
    )


def _hallucinations(segments: list[_Segment]) -> list[_Span]:
    spans: list[_Span] = []
    for segment in segments:
        if not segment.tokens:  # "..." over silence misleads nobody
            continue
        no_speech = segment.no_speech_prob or 0.0
        weak = _weak(segment)
        reasons = []
        if segment.compression_ratio is not None and segment.compression_ratio > (
            COMPRESSION_RATIO_MAX
        ):
            reasons.append("compression_ratio")
        if segment.avg_logprob is not None and segment.avg_logprob < AVG_LOGPROB_MIN:
            reasons.append("avg_logprob")
        if no_speech >= NO_SPEECH_PROB_CERTAIN or (no_speech >= NO_SPEECH_PROB and weak):
            reasons.append("no_speech_prob")
        if (no_speech >= NO_SPEECH_PROB or weak) and _stock_phrase(segment.tokens):
            reasons.append("stock_phrase")
        if reasons:
            spans.append(_Span(segment.start, segment.end, [segment.id], {"reasons": reasons}))
    return _join(spans)


def _low_confidence_runs(segments: list[_Segment]) -> list[_Span]:
    """Runs of LOW_RUN_MIN_WORDS low words in a row; an unscored or edited word ends a run."""
    spans: list[_Span] = []
    run: list[tuple[float, float, int]] = []

    def close() -> None:
        if len(run) >= LOW_RUN_MIN_WORDS:
            ids = list(dict.fromkeys(i for _, _, i in run))
            spans.append(_Span(run[0][0], max(e for _, e, _ in run), ids))
        run.clear()

    for segment in segments:
        for probability, (start, end) in zip(
            segment.word_probabilities, segment.word_times, strict=True
        ):
            if probability is not None and probability < LOW_WORD_PROBABILITY:
                if run and start - run[-1][1] > RUN_MAX_GAP_SECONDS:
                    close()
                run.append((start, end, segment.id))
            else:
                close()
    close()
    return _join(spans)


def _join(spans: list[_Span]) -> list[_Span]:
    """Merge spans closer than SPAN_JOIN_SECONDS (input in time order)."""
    joined: list[_Span] = []
    seen: set[int] = set()  # the last span's segment ids (a set: thousands may be joined)
    for span in spans:
        last = joined[-1] if joined else None
        if last is not None and span.start - last.end < SPAN_JOIN_SECONDS:
            last.end = max(last.end, span.end)
            for i in span.segment_ids:
                if i not in seen:
                    seen.add(i)
                    last.segment_ids.append(i)
            if "reasons" in last.extra:
                last.extra["reasons"] = sorted({*last.extra["reasons"], *span.extra["reasons"]})
        else:
            joined.append(_Span(span.start, span.end, list(span.segment_ids), dict(span.extra)))
            seen = set(span.segment_ids)
    return joined


def _covered(segments: list[_Segment]) -> tuple[list[tuple[float, float]], float]:
    """The union of the segments' intervals (in time order) and its length in seconds."""
    union: list[tuple[float, float]] = []
    for segment in segments:  # sorted by start
        if union and segment.start <= union[-1][1]:
            union[-1] = (union[-1][0], max(union[-1][1], segment.end))
        else:
            union.append((segment.start, segment.end))
    return union, sum(end - start for start, end in union)


def _gaps(covered: list[tuple[float, float]], duration: float) -> list[_Span]:
    """Untranscribed stretches of at least UNTRANSCRIBED_GAP_SECONDS, longest first."""
    edges = [0.0, *(t for interval in covered for t in interval), duration]
    gaps = [
        _Span(start, end, [])
        for start, end in zip(edges[::2], edges[1::2], strict=True)
        if end - start >= UNTRANSCRIBED_GAP_SECONDS
    ]
    return sorted(gaps, key=lambda g: (g.start - g.end, g.start))


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _span_dict(span: _Span) -> dict[str, Any]:
    return {
        "start": round(span.start, 3),
        "end": round(span.end, 3),
        "segment_ids": span.segment_ids[:MAX_SEGMENT_IDS],
        **span.extra,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _percent(ratio: float) -> str:
    return f"{round(ratio * 100)}%"


def _clock(seconds: float) -> str:
    whole = int(max(seconds, 0.0))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _flag_phrase(flag: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """A few words for one flag in ``quality_summary``."""
    code = str(flag.get("code") or "unknown check")
    spans = [s for s in _list(flag.get("spans")) if isinstance(s, Mapping)]
    start = _number(spans[0].get("start")) if spans else None
    at = f" at {_clock(start)}" if start is not None else ""
    if code == "repetition_loop":
        return f"repetition loop{at}"
    if code == "suspected_hallucination":
        return f"possibly invented text{at}"
    if code == "low_confidence":
        ratio = _number(metrics.get("low_confidence_word_ratio"))
        return f"low confidence on {_percent(ratio)} of words" if ratio else "low confidence"
    if code == "speech_not_transcribed":
        coverage = _number(metrics.get("coverage"))
        share = f" ({_percent(coverage)} transcribed)" if coverage is not None else ""
        return f"speech not transcribed{share}"
    if code == "no_speech_detected":
        return "no speech detected"
    if code == "uncertain_language":
        language = metrics.get("language")
        return f"uncertain language ({language})" if isinstance(language, str) else code
    return code.replace("_", " ")
