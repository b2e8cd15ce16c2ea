"""Corrections to a completed job's transcript, with a history that can always be walked back.

`transcript_edit` replaces the text of some segments; `transcript_revert` restores an earlier
revision as a new one (history is never rewritten). Both run under the transcript's row lock and
check the revision the client edited (optimistic concurrency: a stale one is 409
`transcript_revision_conflict` naming the current revision), so two edits sent at once cannot
both apply. The revision row, the audit event and the live-feed event are written in the same
transaction; the rendered-transcript cache is invalidated with it (apps.audio_jobs.transcripts).

Word timings of an edited segment: the new words are sequence-matched (difflib) against the old
ones on a normalised form (case-folded, surrounding punctuation dropped). A word that survives
keeps its start, end and everything else it had (the engine's probability, or the `edited` mark
of a word a person corrected in an earlier edit) and its leading space or lack of one; one whose
spelling changed only in case or punctuation keeps its times. Every other word is new: it is
timed by interpolation, by character length, inside the gap between its surviving neighbours
(the segment's start and end at the edges), in whole milliseconds and at least one each where
the gap has room, so times stay within the segment and never go backwards; surviving words never
move (new words between two adjacent ones have no length). Words whose text is not the engine's
carry `"edited": true` and no `probability` (omitted rather than null: renderers and analytics
that read `probability` with a default keep working; quality scores skip them). An edited
segment carries `"edited": true` and loses its `tokens` (the engine's token ids of the old
text). Segment text keeps the engine's convention (a leading space when the old text had one).

Scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar): text is split per
run, whatever the segment's language. Each grapheme cluster of those scripts (a character with
its combining marks) is a unit; any other run of characters between spaces and those is one
unit ("OK" in a Chinese sentence), with a leading space when a space preceded it. Old words are
split the same way, an old word of several units surviving only whole.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError

from . import events, transcripts
from .models import (
    READ_CACHE,
    EditorType,
    JobStatus,
    RevisionKind,
    Transcript,
    TranscriptionJob,
    TranscriptRevision,
)

NOTE_MAX_CHARS = 500


def max_segment_chars() -> int:
    return settings.TRANSCRIPT_EDIT_MAX_SEGMENT_CHARS


def max_segments_per_edit() -> int:
    return settings.TRANSCRIPT_EDIT_MAX_SEGMENTS


def max_revisions() -> int:
    return settings.TRANSCRIPT_MAX_REVISIONS


class TranscriptUnchanged(ApplicationError):
    code = "transcript_unchanged"


class InvalidRevision(ApplicationError):
    code = "invalid_revision"


# ---- text ----------------------------------------------------------------------------------


def refused_characters(text: str) -> list[str]:
    """Characters no transcript may hold, as `U+XXXX`: controls other than whitespace (NUL cannot
    be stored at all, the others would corrupt subtitles) and lone surrogates (not UTF-8)."""
    bad = sorted(
        {ch for ch in text if not ch.isspace() and unicodedata.category(ch) in ("Cc", "Cs")}
    )
    return [f"U+{ord(ch):04X}" for ch in bad]


def squash(text: str) -> str:
    return " ".join(str(text).split())


def join_text(segments: Iterable[Mapping[str, Any]]) -> str:
    """The transcript's text from its segments, as the engines join it (workers.engines.base)."""
    return " ".join("".join(str(s.get("text", "")) for s in segments).split())


def count_words(segments: Sequence[Mapping[str, Any]], text: str) -> int:
    """As the worker counts them: timed words when there are any, else the text's."""
    timed = sum(len(s.get("words") or []) for s in segments)
    return timed or len(text.split())


def segment_key(segment: Mapping[str, Any], index: int) -> int:
    """A segment's id as the API shows it (`verbose_json`)."""
    try:
        return int(segment.get("id", index))
    except (TypeError, ValueError):
        return index


# ---- word timings --------------------------------------------------------------------------

_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")
_TOKEN = re.compile(r"(\s*)(\S+)")
_ZWJ = "\u200d"

# Scripts written without spaces between words: each of their grapheme clusters is a unit of
# its own. Han (with its extensions and compatibility ideographs), CJK symbols and punctuation,
# Japanese kana, Bopomofo, full- and half-width forms, Thai, Lao, Myanmar and Khmer.
_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31A0, 0x31FF),  # Bopomofo extended, CJK strokes, Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA9E0, 0xA9FF),  # Myanmar extended-B
    (0xAA60, 0xAA7F),  # Myanmar extended-A
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # Full-width and half-width forms
    (0x1B000, 0x1B16F),  # Kana supplement, extended-A, small kana
    (0x20000, 0x3134F),  # CJK extensions B to G
)


def _is_unspaced(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _UNSPACED_RANGES)


def _extends(char: str) -> bool:
    """Whether `char` belongs to the grapheme cluster before it (UAX #29's Extend, roughly):
    combining marks, ZWJ/ZWNJ, variation selectors, emoji modifiers and tags."""
    code = ord(char)
    return (
        unicodedata.category(char).startswith("M")
        or code in (0x200C, 0x200D)
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    )


def _graphemes(text: str) -> list[str]:
    """`text` in user-perceived characters: a base character with the marks that modify it
    (Thai vowels and tones, accents), emoji ZWJ sequences and flag pairs kept whole."""
    clusters: list[str] = []
    for char in text:
        last = clusters[-1] if clusters else ""
        regional_pair = (
            len(last) == 1 and 0x1F1E6 <= ord(last) <= 0x1F1FF and 0x1F1E6 <= ord(char) <= 0x1F1FF
        )
        if last and (_extends(char) or last.endswith(_ZWJ) or regional_pair):
            clusters[-1] = last + char
        else:
            clusters.append(char)
    return clusters


@dataclass
class _Unit:
    text: str
    start: float | None = None
    end: float | None = None
    word: int | None = None  # index of the old word it came from (survivors)
    parts: int = 1  # how many units that old word was split into


def _key(text: str) -> str:
    folded = text.strip().casefold()
    return _EDGE_PUNCTUATION.sub("", folded) or folded


def _split(text: str, *, first_space: bool = True) -> list[str]:
    """`text` in units: each grapheme of an unspaced script, each run of other characters
    between spaces and those graphemes. A unit after whitespace carries one leading space (the
    engines' convention); the first one does when `first_space` and it is not unspaced."""
    units: list[str] = []
    for match in _TOKEN.finditer(text):
        pieces: list[str] = []
        run = ""
        for cluster in _graphemes(match.group(2)):
            if _is_unspaced(cluster[0]):
                if run:
                    pieces.append(run)
                    run = ""
                pieces.append(cluster)
            else:
                run += cluster
        if run:
            pieces.append(run)
        spaced = bool(match.group(1)) or (
            not units and first_space and not _is_unspaced(pieces[0][0])
        )
        if spaced:
            pieces[0] = " " + pieces[0]
        units.extend(pieces)
    return units


def retime_words(
    old_words: Sequence[Mapping[str, Any]], new_text: str, *, start: float, end: float
) -> list[dict[str, Any]]:
    """The words of `new_text`, timed from `old_words` (see the module docstring)."""
    old_words = [w for w in old_words if isinstance(w, Mapping) and str(w.get("word", "")).strip()]
    old_units: list[_Unit] = []
    for index, word in enumerate(old_words):
        pieces = _split(str(word["word"]), first_space=False)
        for piece in pieces:
            old_units.append(
                _Unit(piece, float(word["start"]), float(word["end"]), index, len(pieces))
            )
    # A new first word follows the engine's first word: a leading space or not.
    first_space = str(old_words[0]["word"])[:1].isspace() if old_words else True
    new_units = [_Unit(piece) for piece in _split(new_text, first_space=first_space)]

    matcher = difflib.SequenceMatcher(
        None, [_key(u.text) for u in old_units], [_key(u.text) for u in new_units], autojunk=False
    )
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            old, new = old_units[block.a + k], new_units[block.b + k]
            new.start, new.end, new.word, new.parts = old.start, old.end, old.word, old.parts

    words = _merge(new_units, old_words)
    _interpolate(words, start=start, end=end)
    return words


def _merge(units: list[_Unit], old_words: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Units back into words: the units of one old word that all survived, in order, are that
    word again (its exact times); any other unit is a word of its own, untimed for now."""
    words: list[dict[str, Any]] = []
    i = 0
    while i < len(units):
        unit = units[i]
        run = 1
        if unit.word is not None:
            while i + run < len(units) and units[i + run].word == unit.word:
                run += 1
        if unit.word is not None and run == unit.parts:
            old = old_words[unit.word]
            old_text = str(old["word"])
            text = "".join(u.text for u in units[i : i + run]).strip()
            if text == old_text.strip():
                # The word as it was, spacing included: the engine's (with its probability),
                # or one a person already corrected (still `edited`, still no probability).
                word = {"start": float(old["start"]), "end": float(old["end"]), "word": old_text}
                word.update((k, v) for k, v in old.items() if k not in word)
            else:  # case or punctuation changed: the engine's times, the old word's spacing
                lead = old_text[: len(old_text) - len(old_text.lstrip())]
                word = {
                    "start": float(old["start"]),
                    "end": float(old["end"]),
                    "word": lead + text,
                    "edited": True,
                }
                if "speaker" in old:
                    word["speaker"] = old["speaker"]
            words.append(word)
            i += run
            continue
        # A new word, or a piece of an old word that did not survive whole: timed afresh.
        words.append({"start": None, "end": None, "word": unit.text, "edited": True})
        i += 1
    return words


def _milliseconds(low: float, high: float) -> tuple[int, int]:
    """The first and last whole milliseconds inside [low, high] (first > last: none)."""
    first = math.ceil(low * 1000 - 1e-6)
    if first / 1000 < low:
        first += 1
    last = math.floor(high * 1000 + 1e-6)
    if last / 1000 > high:
        last -= 1
    return first, last


def _interpolate(words: list[dict[str, Any]], *, start: float, end: float) -> None:
    """Time the untimed words inside the gap between their timed neighbours, by characters.

    Surviving words never move. A new word starts no earlier than the previous word ends and
    ends no later than the next one starts (times never go backwards), inside the segment where
    those allow it. Times are whole milliseconds inside the gap, each new word at least one long,
    when the gap has room for that (else unrounded); only a gap of no length at all (adjacent
    survivors) gives zero-length words.
    """
    end = max(end, start)
    i = 0
    while i < len(words):
        if words[i]["start"] is not None:
            i += 1
            continue
        j = i
        while j < len(words) and words[j]["start"] is None:
            j += 1
        after = float(words[i - 1]["end"]) if i > 0 else -math.inf  # the previous word's end
        before = float(words[j]["start"]) if j < len(words) else math.inf  # the next one's start
        low, high = max(start, after), min(end, before)
        if low > high:
            # The engine's words overrun the segment (or overlap): stay in order, as close to the
            # segment as they allow, at one instant.
            point = low if low <= before else max(before, after)
            low = high = point
        count = j - i
        weights = [max(len(str(w["word"]).strip()), 1) for w in words[i:j]]
        total = sum(weights)
        first, last = _milliseconds(low, high)
        if last - first >= count:
            # Whole milliseconds, at least one each, the rest shared by characters.
            spare = last - first - count
            bounds = [first / 1000]
            cumulative = 0
            for k, weight in enumerate(weights):
                cumulative += weight
                bounds.append((first + k + 1 + spare * cumulative // total) / 1000)
        else:
            # Too narrow for that: unrounded, shared by characters (zero length only when the
            # gap has none at all).
            bounds = [low]
            cumulative = 0
            for weight in weights:
                cumulative += weight
                bounds.append(min(high, max(low, low + (high - low) * cumulative / total)))
            bounds[-1] = high
        for k in range(count):
            words[i + k]["start"] = bounds[k]
            words[i + k]["end"] = bounds[k + 1]
        i = j


def edited_segment(segment: Mapping[str, Any], text: str) -> dict[str, Any]:
    """`segment` with its text replaced by `text` (already squashed) and its words retimed."""
    old_text = str(segment.get("text", ""))
    new = dict(segment)
    new["text"] = (" " if old_text[:1].isspace() or not old_text else "") + text
    new.pop("tokens", None)
    new["edited"] = True
    if segment.get("words"):
        new["words"] = retime_words(
            segment["words"], text, start=float(segment["start"]), end=float(segment["end"])
        )
        if segment.get("speaker"):
            new["speaker"] = _carry_speakers(new["words"], str(segment["speaker"]))
    return new


def _carry_speakers(words: list[dict[str, Any]], fallback: str) -> str:
    """Diarized words keep their speaker; a new word takes the speaker of the word before it
    (of the one after it at the start; the segment's when none is labelled). Returns the
    segment's speaker now: the one who speaks most of its words' time (an edit may have removed
    the other speaker's words)."""
    known = [w.get("speaker") for w in words]
    following = next((s for s in known if s), fallback)
    previous = None
    for word, speaker in zip(words, known, strict=True):
        if speaker:
            previous = speaker
        else:
            word["speaker"] = previous or following
    spoken: dict[str, float] = {}
    for word in words:
        length = max(float(word["end"]) - float(word["start"]), 0.0) + 1e-6
        spoken[word["speaker"]] = spoken.get(word["speaker"], 0.0) + length
    return max(spoken, key=lambda label: (spoken[label], label == fallback)) if spoken else fallback


# ---- history -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptState:
    revision: int
    segments: list[dict[str, Any]]
    text: str
    word_count: int

    def as_result(self, transcript: Transcript) -> dict[str, Any]:
        return {
            **transcript.as_result(),
            "text": self.text,
            "segments": self.segments,
        }


def transcript_state_at(*, transcript: Transcript, revision: int) -> TranscriptState:
    """The transcript as it was at `revision` (0 to the current one), rebuilt from the current
    row by undoing the later revisions, newest first."""
    if not 0 <= revision <= transcript.revision:
        raise InvalidRevision(
            f"Revision {revision} does not exist: this transcript has revisions 0 (the machine "
            f"output) to {transcript.revision}.",
            details={"revision": revision, "current_revision": transcript.revision},
        )
    segments = list(transcript.segments)
    text, word_count = transcript.text, transcript.word_count
    undone = (
        TranscriptRevision.objects.filter(transcript=transcript, revision__gt=revision)
        .order_by("-revision")
        .values_list("before", flat=True)
    )
    for before in undone:
        for index, segment in before.get("segments", {}).items():
            segments[int(index)] = segment
        text = before["text"] if "text" in before else join_text(segments)
        word_count = int(before.get("word_count", count_words(segments, text)))
    return TranscriptState(revision, segments, text, word_count)


# ---- services ------------------------------------------------------------------------------


def _locked_transcript(job: TranscriptionJob) -> Transcript:
    if job.status != JobStatus.COMPLETED:
        raise ConflictError(
            f"The job is {job.status}; a transcript can be edited once the job is completed.",
            code="transcript_not_ready",
        )
    transcript = Transcript.objects.select_for_update().filter(job_id=job.pk).first()
    if transcript is None:  # deleted since the caller looked the job up
        raise NotFoundError("No such job.", code="job_not_found")
    transcript.job = job
    return transcript


def max_revisions_with_reverts() -> int:
    """Reverts stay possible past `max_revisions()` (the edit limit), up to twice it in all."""
    return 2 * max_revisions()


def _check_revision(transcript: Transcript, revision: int, *, revert: bool = False) -> None:
    if revision != transcript.revision:
        raise ConflictError(
            f"The transcript is at revision {transcript.revision}, not {revision}: someone "
            "changed it since you loaded it. Load it again and reapply your change.",
            code="transcript_revision_conflict",
            details={"current_revision": transcript.revision},
        )
    # The limit stops edits only: a transcript at it can still be reverted (to the machine
    # output or any earlier revision) instead of being frozen, up to twice the limit in all.
    if revert and transcript.revision >= max_revisions_with_reverts():
        raise ConflictError(
            f"This transcript has reached {max_revisions_with_reverts()} revisions (edits and "
            "reverts) and cannot be changed again.",
            code="transcript_revision_limit",
            details={"limit": max_revisions_with_reverts()},
        )
    if not revert and transcript.revision >= max_revisions():
        raise ConflictError(
            f"This transcript has reached {max_revisions()} revisions and cannot be edited "
            "again; it can still be reverted to an earlier revision (up to "
            f"{max_revisions_with_reverts()} revisions in all).",
            code="transcript_revision_limit",
            details={"limit": max_revisions(), "revert_limit": max_revisions_with_reverts()},
        )


def _editor(user: Any, api_key: Any) -> dict[str, Any]:
    from apps.accounts.models import User

    if isinstance(user, User):
        return {"editor_type": EditorType.USER, "edited_by": user, "editor_repr": user.email[:255]}
    if api_key is not None:
        return {
            "editor_type": EditorType.API_KEY,
            "api_key": api_key,
            "editor_repr": f"API key {api_key.prefix}"[:255],
        }
    return {"editor_type": EditorType.SYSTEM}


def _apply(
    *,
    transcript: Transcript,
    segments: list[dict[str, Any]],
    changed: list[int],
    kind: str,
    note: str,
    user: Any,
    api_key: Any,
    meta: Any,
    text: str | None = None,
    word_count: int | None = None,
    reverted_to: int | None = None,
) -> TranscriptRevision:
    """Write `segments` (the new state; `changed` the indexes that differ) as a new revision."""
    previous = transcript.segments
    before: dict[str, Any] = {
        "segments": {str(i): previous[i] for i in changed},
        "word_count": transcript.word_count,
    }
    if transcript.text != join_text(previous):
        before["text"] = transcript.text
    new_text = join_text(segments) if text is None else text
    now = timezone.now()
    transcript.segments = segments
    transcript.text = new_text
    transcript.word_count = count_words(segments, new_text) if word_count is None else word_count
    transcript.revision += 1
    transcript.edited_at = now
    transcript.save(update_fields=["segments", "text", "word_count", "revision", "edited_at"])
    segment_ids = [segment_key(segments[i], i) for i in changed]
    try:
        with transaction.atomic():
            revision = TranscriptRevision.objects.create(
                transcript=transcript,
                revision=transcript.revision,
                kind=kind,
                reverted_to=reverted_to,
                segment_ids=segment_ids,
                before=before,
                note=note,
                **_editor(user, api_key),
            )
    except IntegrityError:  # only without the row lock (SQL outside the services)
        raise ConflictError(
            "The transcript was changed at the same time; load it again.",
            code="transcript_revision_conflict",
            details={"current_revision": transcript.revision},
        ) from None
    job = transcript.job
    action = (
        AuditAction.TRANSCRIPT_REVERTED
        if kind == RevisionKind.REVERT
        else AuditAction.TRANSCRIPT_EDITED
    )
    metadata: dict[str, Any] = {
        "job_id": str(job.pk),
        "revision": transcript.revision,
        "segments_changed": len(changed),
    }
    if reverted_to is not None:
        metadata["reverted_to"] = reverted_to
    audit_record(
        action=action,
        actor=user,
        api_key=api_key,
        organisation=job.organisation,
        target=job,
        target_repr=f"Transcript of job {job.pk}"[:255],
        meta=meta,
        metadata=metadata,
    )
    transcripts.transcript_changed(job.pk)
    # The organisation's cached job lists: `GET /jobs?q=` matches the text, which changed
    # without a write to the job's row (what invalidates them otherwise).
    READ_CACHE.invalidate([job.organisation_id])
    events.transcript_revised(job=job, revision=revision, edited_at=now)  # last: feed order lock
    return revision


def _named(ids: list[int]) -> str:
    """Segment ids for an error message (the first 20; `details` lists up to 100)."""
    return ", ".join(str(i) for i in ids[:20])


@transaction.atomic
def transcript_edit(
    *,
    job: TranscriptionJob,
    revision: int,
    segments: Sequence[Mapping[str, Any]],
    note: str = "",
    user: Any = None,
    api_key: Any = None,
    meta: Any = None,
) -> tuple[Transcript, TranscriptRevision]:
    """Replace the text of `segments` (`[{"id", "text"}]`, ids unique, text validated) in the
    job's transcript at `revision`; returns the transcript and the revision written."""
    transcript = _locked_transcript(job)
    _check_revision(transcript, revision)
    index_of: dict[int, int] = {}
    ambiguous: set[int] = set()
    for index, segment in enumerate(transcript.segments):
        key = segment_key(segment, index)
        if key in index_of:
            ambiguous.add(key)
        index_of[key] = index
    unknown = [int(s["id"]) for s in segments if int(s["id"]) not in index_of]
    if unknown:
        raise ApplicationError(
            f"No segment of this transcript has the id {_named(unknown)}.",
            code="unknown_segment",
            details={"segment_ids": unknown[:100]},
        )
    duplicated = sorted({int(s["id"]) for s in segments} & ambiguous)
    if duplicated:
        raise ConflictError(
            f"Several segments of this transcript share the id {_named(duplicated)}; they "
            "cannot be edited one by one.",
            code="transcript_segment_ambiguous",
            details={"segment_ids": duplicated[:100]},
        )
    new_segments = list(transcript.segments)
    changed: list[int] = []
    for item in segments:
        index = index_of[int(item["id"])]
        text = squash(item["text"])
        if text == squash(new_segments[index].get("text", "")):
            continue
        new_segments[index] = edited_segment(new_segments[index], text)
        changed.append(index)
    if not changed:
        raise TranscriptUnchanged(
            "The segments already have this text: nothing to change.",
            details={"revision": transcript.revision},
        )
    changed.sort()
    written = _apply(
        transcript=transcript,
        segments=new_segments,
        changed=changed,
        kind=RevisionKind.EDIT,
        note=note,
        user=user,
        api_key=api_key,
        meta=meta,
    )
    return transcript, written


@transaction.atomic
def transcript_revert(
    *,
    job: TranscriptionJob,
    revision: int,
    current_revision: int,
    note: str = "",
    user: Any = None,
    api_key: Any = None,
    meta: Any = None,
) -> tuple[Transcript, TranscriptRevision]:
    """Make the transcript what it was at `revision`, as a new revision (the history stays)."""
    transcript = _locked_transcript(job)
    _check_revision(transcript, current_revision, revert=True)
    if revision >= transcript.revision:
        raise InvalidRevision(
            f"Revision {revision} is not an earlier revision: this transcript is at revision "
            f"{transcript.revision}; revert to 0 (the machine output) to "
            f"{max(transcript.revision - 1, 0)}.",
            details={"revision": revision, "current_revision": transcript.revision},
        )
    target = transcript_state_at(transcript=transcript, revision=revision)
    changed = [
        i
        for i, (now, then) in enumerate(zip(transcript.segments, target.segments, strict=True))
        if now != then
    ]
    if not changed and target.text == transcript.text:
        raise TranscriptUnchanged(
            f"The transcript is already as it was at revision {revision}: nothing to change.",
            details={"revision": transcript.revision},
        )
    written = _apply(
        transcript=transcript,
        segments=copy.deepcopy(target.segments),
        changed=changed,
        kind=RevisionKind.REVERT,
        note=note,
        user=user,
        api_key=api_key,
        meta=meta,
        text=target.text,
        word_count=target.word_count,
        reverted_to=revision,
    )
    return transcript, written
