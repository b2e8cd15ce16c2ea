"""Render a transcription as plain text, SubRip (SRT), WebVTT or OpenAI-style verbose JSON.

Every renderer accepts a ``workers.engines.base.TranscriptionResult`` or the equivalent dict
(``TranscriptionResult.to_dict()``, as stored in the database), so stored transcripts render
without loading an engine.

Subtitle cues keep to ``max_line_width`` characters per line and ``max_lines`` lines per cue
(42 and 2, the common broadcast guideline); a longer segment is split into several cues, timed
from its word timestamps when present and by character count otherwise.

Speakers (after diarization): a segment may carry ``"speaker": "SPEAKER_00"`` (who spoke most of
it), each of its words its own ``"speaker"``, and the result ``"speaker_names"`` (label -> the
name members gave it). A segment whose words all have one speaker is shown as theirs (as the
segment's when its words have none); one whose words change speaker is split at each change (a
word without a speaker goes with the word before it, or the first one after it at the start).
Plain text writes a "Name: " prefix at the start of each turn; subtitles never mix two speakers
in one cue and name the speaker on every cue; JSON keeps the labels. A transcript without
speakers renders exactly as before.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LINE_WIDTH = 42
MAX_LINES = 2
# "-->" (or "--->", which one replace would turn into it) inside SRT text reads as a timing line.
_ARROW = re.compile(r"-{2,}>")
# Timed words: a pause this long between two words starts a new cue (a batched engine's segment
# can span a whole <= 30 s window, silences included), and a cue stays on screen this long after
# its last word, never into the next cue or past its segment.
PAUSE_SPLIT_SECONDS = 1.5
HOLD_SECONDS = 0.5
# A cue is shown at least this long (players drop or flash a zero-length cue, as Whisper's last
# word often is when its timestamps collapse onto the end of the audio), unless the next cue
# starts sooner.
MIN_CUE_SECONDS = 0.8
# SubRip has no escaping, and players (VLC, mpv/libass, most TVs) read these as styling: <i>, <b>,
# <u>, <s>, <font ...> and ASS override blocks "{\an8}". A zero-width space after the opening
# character shows the text as spoken without the player taking it as markup.
_SRT_MARKUP = re.compile(r"<(?=/?(?:[ibus]|font)\b[^>]*>)|\{(?=\\)", re.IGNORECASE)
_ZERO_WIDTH_SPACE = "\u200b"
# Diarization labels (pyannote's and whisperX's): shown as "Speaker <number + 1>" until named.
_SPEAKER_LABEL = re.compile(r"SPEAKER_(\d+)")


@dataclass(frozen=True)
class OutputFormat:
    name: str
    media_type: str
    extension: str


FORMATS: dict[str, OutputFormat] = {
    "txt": OutputFormat("txt", "text/plain; charset=utf-8", "txt"),
    "srt": OutputFormat("srt", "application/x-subrip; charset=utf-8", "srt"),
    "vtt": OutputFormat("vtt", "text/vtt; charset=utf-8", "vtt"),
    "json": OutputFormat("json", "application/json", "json"),
}


# ---------------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------------


def _as_dict(result: Any) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
        if isinstance(data, Mapping):
            return data
    raise TypeError(f"Cannot render {type(result).__name__}; pass a TranscriptionResult or dict.")


def _segments(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for s in data.get("segments") or [] if isinstance(s, Mapping)]


def _squash(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# Speakers
# ---------------------------------------------------------------------------------------------


def stored_label(value: Any) -> str | None:
    """A stored speaker label, or None when there is none (missing, blank or not a string)."""
    return value if isinstance(value, str) and value.strip() else None


def _speaker_name(label: str, names: Mapping[str, Any] | None) -> str | None:
    name = (names or {}).get(label)
    return _squash(name) if isinstance(name, str) and name.strip() else None


def speaker_display(label: str, names: Mapping[str, Any] | None = None) -> str:
    """How a speaker label is shown: the name members gave it (``names[label]``) when it has a
    non-blank one, else "Speaker N" for ``SPEAKER_<N - 1>`` (``SPEAKER_00`` is "Speaker 1"), else
    the label itself. Whitespace runs, newlines included, become one space (a newline would end
    a subtitle line, a blank line a cue)."""
    name = _speaker_name(label, names)
    if name is not None:
        return name
    match = _SPEAKER_LABEL.fullmatch(label.strip())
    if match:
        return f"Speaker {int(match.group(1)) + 1}"
    return _squash(label)


def _speaker_names(data: Mapping[str, Any]) -> Mapping[str, Any]:
    names = data.get("speaker_names")
    return names if isinstance(names, Mapping) else {}


def _text_words(segment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The segment's words that have text (the ones subtitles and plain text show)."""
    return [
        w
        for w in segment.get("words") or []
        if isinstance(w, Mapping) and w.get("word") and str(w["word"]).strip()
    ]


def word_speakers(
    segment: Mapping[str, Any], words: Sequence[Mapping[str, Any]]
) -> list[str | None]:
    """The speaker each of ``words`` is shown under.

    When the words do not change speaker, all of them are their speaker (the segment's when they
    have none: the words are where the speakers were placed, and an edit that removed one
    speaker's words leaves the segment's label behind); when they do, each keeps its own, a word
    without one going with the word before it (the first word after it, at the start of the
    segment).
    """
    own = [stored_label(w.get("speaker")) for w in words]
    known = [s for s in own if s is not None]
    if len(set(known)) <= 1:
        return [known[0] if known else stored_label(segment.get("speaker"))] * len(words)
    current = known[0]
    speakers: list[str | None] = []
    for speaker in own:
        current = speaker or current
        speakers.append(current)
    return speakers


# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------


def format_timestamp(seconds: float, *, decimal_marker: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``decimal_marker="."``, ``HH:MM:SS.mmm`` (WebVTT).

    Hours keep counting past 99; negative input is treated as zero.
    """
    total_ms = max(0, round(float(seconds) * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


# ---------------------------------------------------------------------------------------------
# Cues
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cue:
    """One subtitle cue. ``lines`` are the spoken text only: the renderers name ``speaker`` (a
    diarization label, None without diarization) in front of the first line."""

    start: float
    end: float
    lines: tuple[str, ...]
    speaker: str | None = None


@dataclass(frozen=True)
class _Unit:
    text: str  # with its leading space when the language separates words with spaces
    start: float | None
    end: float | None
    speaker: str | None = None


def _units(segment: Mapping[str, Any], width: int) -> list[_Unit]:
    if any(isinstance(w, Mapping) and w.get("word") for w in segment.get("words") or []):
        words = _text_words(segment)
        return [
            _Unit(str(w["word"]), float(w["start"]), float(w["end"]), speaker)
            for w, speaker in zip(words, word_speakers(segment, words), strict=True)
        ]
    speaker = stored_label(segment.get("speaker"))
    units: list[_Unit] = []
    for token in _squash(segment.get("text", "")).split(" "):
        # A token wider than a line (a URL, or text in a script without spaces) is cut.
        pieces = [token[i : i + width] for i in range(0, len(token), width)] or [""]
        units.append(_Unit(" " + pieces[0], None, None, speaker))
        units.extend(_Unit(piece, None, None, speaker) for piece in pieces[1:])
    return [u for u in units if u.text.strip()]


def _line_text(units: Sequence[_Unit]) -> str:
    return _squash("".join(u.text for u in units))


def _pack_lines(units: list[_Unit], width: int) -> list[list[_Unit]]:
    lines: list[list[_Unit]] = []
    current: list[_Unit] = []
    for unit in units:
        if current and len(_line_text([*current, unit])) > width:
            lines.append(current)
            current = []
        current.append(unit)
    if current:
        lines.append(current)
    return lines


def _size(units: Sequence[_Unit]) -> int:
    return len(_line_text(units))


def _group_units(units: list[_Unit], width: int, max_lines: int) -> list[list[_Unit]]:
    """Split ``units`` into as few cues as the line limits allow, of balanced length (so a long
    segment does not end with a one-word cue)."""
    greedy = _pack_lines(units, width)
    count = -(-len(greedy) // max_lines)
    if count == 1:
        return [units]
    target = sum(len(u.text) for u in units) / count
    groups: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        # Close the cue when this unit would take it past its share (by more than half the unit).
        if current and size + len(unit.text) / 2 > target and len(groups) < count - 1:
            groups.append(current)
            current, size = [], 0
        current.append(unit)
        size += len(unit.text)
    groups.append(current)
    if any(len(_pack_lines(group, width)) > max_lines for group in groups):
        return [
            [u for line in greedy[i : i + max_lines] for u in line]
            for i in range(0, len(greedy), max_lines)
        ]
    return groups


def _wrap(units: list[_Unit], width: int, max_lines: int) -> tuple[str, ...]:
    """Lines for one cue; two lines are balanced rather than filled top-first."""
    lines = _pack_lines(units, width)
    if len(lines) == 2 and max_lines >= 2:
        best: tuple[int, int] | None = None
        for k in range(1, len(units)):
            top, bottom = _size(units[:k]), _size(units[k:])
            if top <= width and bottom <= width and (best is None or max(top, bottom) < best[0]):
                best = (max(top, bottom), k)
        if best is not None:
            return (_line_text(units[: best[1]]), _line_text(units[best[1] :]))
    return tuple(_line_text(line) for line in lines)


def segment_cues(
    segment: Mapping[str, Any], *, max_line_width: int = MAX_LINE_WIDTH, max_lines: int = MAX_LINES
) -> list[Cue]:
    """Split one segment into cues of at most ``max_lines`` lines of ``max_line_width``.

    A word wider than a line stays whole (timed words) or is cut (untimed text). With timed words
    a cue starts with its first word, a pause of ``PAUSE_SPLIT_SECONDS`` or a change of speaker
    starts a new cue, and a cue ends ``HOLD_SECONDS`` after its last word (so no text is shown
    over a silence); untimed text is spread over the segment by character count, all of it the
    segment's speaker.

    The speaker's name is not counted in the line width: WebVTT players do not show it (it is
    the cue's voice annotation), and so naming or renaming a speaker never moves a cue.
    """
    start, end = float(segment["start"]), float(segment["end"])
    end = max(end, start)
    units = _units(segment, max_line_width)
    if not units:
        return []
    if all(u.start is not None and u.end is not None for u in units):
        return _timed_cues(units, end, max_line_width, max_lines)
    groups = _group_units(units, max_line_width, max_lines)
    total_chars = sum(len(u.text) for u in units) or 1
    boundaries = [start]
    used_chars = 0
    for group in groups[:-1]:
        used_chars += sum(len(u.text) for u in group)
        boundary = start + (end - start) * used_chars / total_chars
        boundaries.append(min(max(boundary, boundaries[-1]), end))
    boundaries.append(end)
    return [
        Cue(
            boundaries[i],
            boundaries[i + 1],
            _wrap(group, max_line_width, max_lines),
            group[0].speaker,
        )
        for i, group in enumerate(groups)
    ]


def _timed_cues(units: list[_Unit], end: float, width: int, max_lines: int) -> list[Cue]:
    runs: list[list[_Unit]] = [[units[0]]]
    for previous, unit in itertools.pairwise(units):
        pause = float(unit.start or 0.0) - float(previous.end or 0.0)
        if pause >= PAUSE_SPLIT_SECONDS or unit.speaker != previous.speaker:
            runs.append([])
        runs[-1].append(unit)
    groups = [group for run in runs for group in _group_units(run, width, max_lines)]
    cues = []
    for i, group in enumerate(groups):
        cue_start = float(group[0].start or 0.0)
        limit = float(groups[i + 1][0].start or 0.0) if i + 1 < len(groups) else end
        last_word_end = float(group[-1].end or 0.0)
        cue_end = min(max(last_word_end + HOLD_SECONDS, cue_start), max(limit, last_word_end))
        lines = _wrap(group, width, max_lines)
        cues.append(Cue(cue_start, max(cue_end, cue_start), lines, group[0].speaker))
    return cues


def build_cues(
    result: Any, *, max_line_width: int = MAX_LINE_WIDTH, max_lines: int = MAX_LINES
) -> list[Cue]:
    """All subtitle cues of a transcription, in order."""
    if max_line_width < 1 or max_lines < 1:
        raise ValueError("max_line_width and max_lines must be positive.")
    cues: list[Cue] = []
    for segment in _segments(_as_dict(result)):
        cues.extend(segment_cues(segment, max_line_width=max_line_width, max_lines=max_lines))
    return _with_minimum_duration(cues)


def _with_minimum_duration(cues: list[Cue]) -> list[Cue]:
    """Lengthen each cue shorter than ``MIN_CUE_SECONDS``, up to the start of the next cue (or
    past the end of the audio for the last one); a cue starting with the next keeps the minimum
    and the two are shown together, as their words were spoken together."""
    out = []
    for i, cue in enumerate(cues):
        end = max(cue.end, cue.start + MIN_CUE_SECONDS)
        if i + 1 < len(cues) and cue.start < cues[i + 1].start:
            end = max(cue.end, min(end, cues[i + 1].start))
        out.append(cue if end == cue.end else dataclasses.replace(cue, end=end))
    return out


# ---------------------------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------------------------


def render_txt(result: Any) -> str:
    """One line per segment (the whole text when there are no segments).

    With speakers, a dialogue script: a segment whose words change speaker is one line per
    speaker, and the first line of each turn (a speaker's consecutive lines) starts with
    "<name>: " (see ``speaker_display``). A line without a speaker has no prefix.
    """
    data = _as_dict(result)
    parts = [part for s in _segments(data) for part in _speaker_parts(s)]
    parts = [(speaker, line) for speaker, line in parts if line]
    if not parts and _squash(data.get("text", "")):
        parts = [(None, _squash(data.get("text", "")))]
    names = _speaker_names(data)
    out = []
    previous: str | None = None
    for speaker, line in parts:
        if speaker is not None and speaker != previous:
            line = f"{speaker_display(speaker, names)}: {line}"
        out.append(line + "\n")
        previous = speaker
    return "".join(out)


def _speaker_parts(segment: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """``(speaker, text)`` of a segment: its text, or, when its words change speaker, the text of
    each run of one speaker's words."""
    words = _text_words(segment)
    speakers = word_speakers(segment, words)
    if len(set(speakers)) <= 1:
        speaker = speakers[0] if speakers else stored_label(segment.get("speaker"))
        return [(speaker, _squash(segment.get("text", "")))]
    parts: list[tuple[str | None, str]] = []
    for speaker, run in itertools.groupby(zip(speakers, words, strict=True), key=lambda p: p[0]):
        parts.append((speaker, _squash("".join(str(w["word"]) for _, w in run))))
    return parts


def render_srt(
    result: Any, *, max_line_width: int = MAX_LINE_WIDTH, max_lines: int = MAX_LINES
) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line between cues.

    A cue with a speaker starts "<name>: " (see ``speaker_display``; not counted in the width).
    """
    data = _as_dict(result)
    names = _speaker_names(data)
    blocks = []
    cues = build_cues(data, max_line_width=max_line_width, max_lines=max_lines)
    for number, cue in enumerate(cues, start=1):
        lines = list(cue.lines)
        if cue.speaker is not None and lines:
            lines[0] = f"{speaker_display(cue.speaker, names)}: {lines[0]}"
        # "-->" inside text would be read as a timing line by some players.
        text = "\n".join(_srt_text(line) for line in lines)
        timing = f"{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}"
        blocks.append(f"{number}\n{timing}\n{text}\n")
    return "\n".join(blocks)


def _srt_text(line: str) -> str:
    return _SRT_MARKUP.sub(lambda m: m.group(0) + _ZERO_WIDTH_SPACE, _ARROW.sub("->", line))


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(
    result: Any, *, max_line_width: int = MAX_LINE_WIDTH, max_lines: int = MAX_LINES
) -> str:
    """WebVTT: a ``WEBVTT`` header, then cues timed ``HH:MM:SS.mmm --> HH:MM:SS.mmm``.

    A cue with a speaker is a voice span, ``<v Name>text`` (see ``speaker_display``), which
    players use for styling rather than show.
    """
    data = _as_dict(result)
    names = _speaker_names(data)
    blocks = ["WEBVTT\n"]
    for cue in build_cues(data, max_line_width=max_line_width, max_lines=max_lines):
        start = format_timestamp(cue.start, decimal_marker=".")
        end = format_timestamp(cue.end, decimal_marker=".")
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        if cue.speaker is not None:
            text = f"<v {_vtt_escape(speaker_display(cue.speaker, names))}>{text}"
        blocks.append(f"{start} --> {end}\n{text}\n")
    return "\n".join(blocks)


def verbose_json(result: Any) -> dict[str, Any]:
    """OpenAI ``verbose_json``: task, language, duration, text, segments and words.

    ``language`` is the ISO 639-1 code Whisper reports (OpenAI's API writes the English name,
    e.g. "english"). Segment fields absent from the stored data are omitted.

    After diarization, segments and words carry their ``speaker`` label as stored, and a
    ``speakers`` list follows: ``{"id": label, "name": name or None}`` for every label, in order
    of first appearance. Without speakers, none of these keys is present.
    """
    data = _as_dict(result)
    segments_out = []
    words_out = []
    labels: dict[str, None] = {}  # in order of first appearance
    for index, segment in enumerate(_segments(data)):
        item: dict[str, Any] = {
            "id": int(segment.get("id", index)),
            "seek": int(segment.get("seek", 0)),
            "start": float(segment["start"]),
            "end": float(segment["end"]),
            "text": str(segment.get("text", "")),
        }
        for key in ("tokens", "temperature", "avg_logprob", "compression_ratio"):
            if segment.get(key) is not None:
                item[key] = segment[key]
        item["no_speech_prob"] = float(segment.get("no_speech_prob", 0.0))
        segment_speaker = stored_label(segment.get("speaker"))
        if segment_speaker is not None:
            item["speaker"] = segment_speaker
        segments_out.append(item)
        for word in segment.get("words") or []:
            if isinstance(word, Mapping) and str(word.get("word", "")).strip():
                word_item: dict[str, Any] = {
                    "word": str(word["word"]).strip(),
                    "start": float(word["start"]),
                    "end": float(word["end"]),
                }
                word_speaker = stored_label(word.get("speaker"))
                if word_speaker is not None:
                    word_item["speaker"] = word_speaker
                    labels.setdefault(word_speaker)
                words_out.append(word_item)
        if segment_speaker is not None:
            labels.setdefault(segment_speaker)
    out: dict[str, Any] = {
        "task": str(data.get("task", "transcribe")),
        "language": str(data.get("language", "")),
        "duration": float(data.get("duration") or 0.0),
        "text": str(data.get("text", "")),
        "segments": segments_out,
        "words": words_out,
    }
    if labels:
        names = _speaker_names(data)
        out["speakers"] = [{"id": label, "name": _speaker_name(label, names)} for label in labels]
    return out


def render_json(result: Any, *, pretty: bool = False) -> str:
    """``verbose_json`` as a UTF-8 JSON document (non-ASCII kept as is).

    Compact unless ``pretty``: an indent makes the standard library fall back from its C encoder
    to the pure-Python one, several times slower on a long transcript. Downloads are pretty.
    """
    if pretty:
        return json.dumps(verbose_json(result), ensure_ascii=False, indent=2) + "\n"
    return json.dumps(verbose_json(result), ensure_ascii=False, separators=(",", ":")) + "\n"


_RENDERERS: dict[str, Callable[[Any], str]] = {
    "txt": render_txt,
    "srt": render_srt,
    "vtt": render_vtt,
    "json": render_json,
}


def render(result: Any, fmt: str) -> str:
    """Render ``result`` in ``fmt`` ("txt", "srt", "vtt" or "json")."""
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.") from None
    return renderer(result)


def render_transcript(result: Any, fmt: str, *, pretty: bool = False) -> tuple[str, str, str]:
    """Render for download: ``(body, media type, file extension)``; ``pretty`` indents JSON."""
    body = render_json(result, pretty=True) if pretty and fmt == "json" else render(result, fmt)
    output = FORMATS[fmt]
    return body, output.media_type, output.extension
