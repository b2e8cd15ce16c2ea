"""Corrections to a completed job's transcript, with a history that can always be walked back.

`transcript_edit` replaces the text of some segments; `transcript_revert` restores an earlier
revision as a new one (history is never rewritten). Both run under the transcript's row lock and
check the revision the client edited (optimistic concurrency: a stale one is 409
`transcript_revision_conflict` naming the current revision), so two edits sent at once cannot
both apply. The revision row, the audit event and the live-feed event are written in the same
transaction; the rendered-transcript cache is invalidated with it (apps.audio_jobs.transcripts).

Word timings of an edited segment: the new words are sequence-matched (difflib) against the old
ones on a normalised form (case-folded, surrounding punctuation dropped). A word that survives
keeps the engine's start, end and probability; one whose spelling changed only in case or
punctuation keeps its times. Every other word is new: it is timed by interpolation, by character
length, inside the gap between its surviving neighbours (the segment's start and end at the
edges), so times stay within the segment and never go backwards. Words whose text is not the
engine's carry `"edited": true` and no `probability` (omitted rather than null: renderers and
analytics that read `probability` with a default keep working; quality scores skip them). An
edited segment carries `"edited": true` and loses its `tokens` (the engine's token ids of the old
text). Segment text keeps the engine's convention (a leading space when the old text had one).

Languages written without spaces (Chinese, Japanese, Thai...): Whisper's words there carry no
leading space; the new text is split into characters (runs of Latin letters and digits stay
together) and matched the same way, an old word of several characters surviving only whole.
"""

from __future__ import annotations

import copy
import difflib
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

# A unit of text in languages without spaces: a run of Latin letters/digits, or one character.
_UNSPACED_UNIT = re.compile(r"\s*(?:[A-Za-z0-9\u00C0-\u024F]+|\S)")
_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


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


def _split(text: str, *, spaced: bool) -> list[str]:
    if spaced:
        return [" " + word for word in text.split()]
    return [
        (" " if m.group(0)[0].isspace() else "") + m.group(0).strip()
        for m in _UNSPACED_UNIT.finditer(text)
    ]


def retime_words(
    old_words: Sequence[Mapping[str, Any]], new_text: str, *, start: float, end: float
) -> list[dict[str, Any]]:
    """The words of `new_text`, timed from `old_words` (see the module docstring)."""
    old_words = [w for w in old_words if isinstance(w, Mapping) and str(w.get("word", "")).strip()]
    spaced = any(str(w["word"]).startswith(" ") for w in old_words) or not old_words
    old_units: list[_Unit] = []
    for index, word in enumerate(old_words):
        pieces = [str(word["word"]).strip()] if spaced else _split(str(word["word"]), spaced=False)
        for piece in pieces:
            old_units.append(
                _Unit(piece, float(word["start"]), float(word["end"]), index, len(pieces))
            )
    new_units = [_Unit(piece) for piece in _split(new_text, spaced=spaced)]

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
            text = "".join(u.text for u in units[i : i + run])
            word: dict[str, Any] = {"start": float(old["start"]), "end": float(old["end"])}
            word["word"] = text
            if text == str(old["word"]):
                if "probability" in old:
                    word["probability"] = old["probability"]
            else:
                word["edited"] = True
            words.append(word)
            i += run
            continue
        # A new word, or a piece of an old word that did not survive whole: timed afresh.
        words.append({"start": None, "end": None, "word": unit.text, "edited": True})
        i += 1
    return words


def _interpolate(words: list[dict[str, Any]], *, start: float, end: float) -> None:
    """Time the untimed words inside the gap between their timed neighbours, by characters."""
    end = max(end, start)
    i = 0
    while i < len(words):
        if words[i]["start"] is not None:
            i += 1
            continue
        j = i
        while j < len(words) and words[j]["start"] is None:
            j += 1
        # Inside the segment, after the previous word and before the next one (when the
        # engine's own words overrun the segment, after them: times never go backwards).
        low = start if i == 0 else max(start, float(words[i - 1]["end"]))
        high = end if j == len(words) else min(end, float(words[j]["start"]))
        high = max(high, low)
        weights = [max(len(str(w["word"]).strip()), 1) for w in words[i:j]]
        total = sum(weights)
        cursor = 0
        for k, weight in enumerate(weights):
            words[i + k]["start"] = round(low + (high - low) * cursor / total, 3)
            cursor += weight
            words[i + k]["end"] = round(low + (high - low) * cursor / total, 3)
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
    return new


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


def _check_revision(transcript: Transcript, revision: int) -> None:
    if revision != transcript.revision:
        raise ConflictError(
            f"The transcript is at revision {transcript.revision}, not {revision}: someone "
            "changed it since you loaded it. Load it again and reapply your change.",
            code="transcript_revision_conflict",
            details={"current_revision": transcript.revision},
        )
    if transcript.revision >= max_revisions():
        raise ConflictError(
            f"This transcript has reached {max_revisions()} revisions and cannot be changed again.",
            code="transcript_revision_limit",
            details={"limit": max_revisions()},
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
    events.transcript_revised(job=job, revision=revision, edited_at=now)  # last: feed order lock
    return revision


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
            "No segment of this transcript has the id "
            + ", ".join(str(i) for i in unknown[:20])
            + ".",
            code="unknown_segment",
            details={"segment_ids": unknown[:100]},
        )
    duplicated = sorted({int(s["id"]) for s in segments} & ambiguous)
    if duplicated:
        raise ConflictError(
            "Several segments of this transcript share the id "
            + ", ".join(str(i) for i in duplicated[:20])
            + "; they cannot be edited one by one.",
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
    _check_revision(transcript, current_revision)
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
