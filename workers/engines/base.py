"""The one interface every Whisper engine implements, and the result it returns.

Engines turn an audio file into a ``TranscriptionResult``. The result is plain data: it
round-trips through ``to_dict``/``from_dict`` so a job can store it as JSON, and
``apps.audio_jobs.formats`` renders either form.

``finalize_segments`` is the shared clean-up every engine applies to raw model output: it removes
U+FFFD replacement characters and control characters, drops segments left empty, and makes
timestamps monotonic and clamped inside ``[0, duration]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

from workers.engines.errors import ProfileError, TranscriptionCancelled
from workers.engines.models import ModelFiles, check_vocabulary_language, normalise_language

Task = Literal["transcribe", "translate"]
TASKS: tuple[str, ...] = ("transcribe", "translate")


def is_task(value: str) -> TypeGuard[Task]:
    return value in TASKS


def parse_task(value: str) -> Task:
    """`value` as a Task; ValueError when it is not one."""
    if not is_task(value):
        raise ValueError(f"task must be one of {TASKS}, not {value!r}.")
    return value


ProgressCallback = Callable[[float, float], None]
"""Called as ``progress_callback(seconds_done, total_seconds)``."""

CancelCheck = Callable[[], bool]
"""Returns true when the caller wants the transcription to stop."""

AudioPath = str | PathLike[str]

MAX_BEAM_SIZE = 10
MAX_PROMPT_CHARS = 1000
# What a job or an organisation may list; the engines use at most HOTWORDS_MAX_TOKENS of it.
MAX_HOTWORDS_CHARS = 500
# The decoder has 448 positions for its prompt and the text it writes. Whisper keeps at most 223
# tokens of previous text (an initial prompt, or the last window's words) so that the text has
# room; faster-whisper adds the hotwords on top of that. At most 64 tokens of hotwords, and an
# initial prompt trimmed so that hotwords and prompt stay within 223, leave every window at least
# 155 tokens to write (fit_prompt).
HOTWORDS_MAX_TOKENS = 64
PROMPT_MAX_TOKENS = 223


def fit_prompt(
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    hotwords: str | None,
    initial_prompt: str | None,
    *,
    total: int = PROMPT_MAX_TOKENS,
) -> tuple[str | None, str | None]:
    """Hotwords and the initial prompt cut to what the decoder's prompt can hold beside the text
    it writes, counted in the model's tokens: the hotwords to ``HOTWORDS_MAX_TOKENS``, whole
    terms in their order (a term that does not fit is left out, later ones may still fit), then
    the initial prompt to what is left of ``total``, its end kept (the words nearest the audio,
    as Whisper keeps them). Without this, 500 characters of codes or non-Latin names and a long
    prompt overflow the 448 positions: the job fails, or the window has no room for its text."""
    if hotwords:
        kept: list[str] = []
        for term in (t.strip() for t in hotwords.split(",")):
            if term and len(encode(" " + ", ".join([*kept, term]))) <= HOTWORDS_MAX_TOKENS:
                kept.append(term)
        hotwords = ", ".join(kept) or None
    used = len(encode(" " + hotwords)) if hotwords else 0
    if initial_prompt:
        tokens = encode(" " + initial_prompt.strip())
        room = max(total - used - 1, 0)  # less one: the space re-encoded at its start
        if len(tokens) > room:
            initial_prompt = decode(tokens[len(tokens) - room :]).strip() if room else ""
        initial_prompt = initial_prompt or None
    return hotwords, initial_prompt


def merge_hotwords(*lists: str) -> str:
    """Comma-separated hotword lists joined in the order given (a job's own, then its
    organisation's), each term once (case aside) and whitespace collapsed, within
    ``MAX_HOTWORDS_CHARS``: terms that no longer fit are left out, the last list's first."""
    terms: list[str] = []
    seen: set[str] = set()
    for hotwords in lists:
        for raw in (hotwords or "").split(","):
            term = " ".join(raw.split())
            if term and term.casefold() not in seen:
                seen.add(term.casefold())
                terms.append(term)
    merged: list[str] = []
    for term in terms:
        if len(", ".join([*merged, term])) <= MAX_HOTWORDS_CHARS:
            merged.append(term)
    return ", ".join(merged)


@dataclass(frozen=True)
class TranscriptionOptions:
    """What to ask of the engine.

    ``language`` is a Whisper language code, or None to detect it. ``vad`` filters out
    non-speech with Silero VAD first, so silence and music do not produce invented text.
    ``hotwords``: names and terms the audio holds ("Siobhan Ngata, Kubernetes"), given to the
    model in every window's prompt (faster-whisper's ``hotwords``; openai-whisper carries them
    as its initial prompt into every window), where ``initial_prompt`` conditions only the
    start.
    """

    language: str | None = None
    task: Task = "transcribe"
    word_timestamps: bool = True
    initial_prompt: str | None = None
    beam_size: int = 5
    vad: bool = True
    hotwords: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "language", normalise_language(self.language))
        parse_task(self.task)
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(f"beam_size must be between 1 and {MAX_BEAM_SIZE}.")
        if self.initial_prompt is not None:
            prompt = self.initial_prompt.strip()
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(f"initial_prompt is limited to {MAX_PROMPT_CHARS} characters.")
            object.__setattr__(self, "initial_prompt", prompt or None)
        if self.hotwords is not None:
            hotwords = " ".join(self.hotwords.split())
            if len(hotwords) > MAX_HOTWORDS_CHARS:
                raise ValueError(f"hotwords are limited to {MAX_HOTWORDS_CHARS} characters.")
            object.__setattr__(self, "hotwords", hotwords or None)


@dataclass
class Word:
    """One word with its timing; ``word`` keeps Whisper's leading space."""

    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    """One decoded segment. Field names follow OpenAI's ``verbose_json`` segments."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)
    seek: int = 0
    tokens: list[int] = field(default_factory=list)
    temperature: float | None = None
    compression_ratio: float | None = None


@dataclass
class TranscriptionResult:
    """A finished transcription.

    ``duration`` is the decoded length of the audio in seconds. ``engine_info`` records how the
    result was produced (engine, model profile, model sha256, settings) for reproducibility.
    """

    text: str
    language: str
    language_probability: float
    duration: float
    segments: list[Segment]
    task: str = "transcribe"
    engine_info: dict[str, Any] = field(default_factory=dict)

    @property
    def words(self) -> list[Word]:
        return [word for segment in self.segments for word in segment.words]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (the stored form)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranscriptionResult:
        """Build a result from ``to_dict`` output (unknown keys are ignored)."""
        segments = [_segment_from_dict(item, index) for index, item in enumerate(data["segments"])]
        return cls(
            text=str(data.get("text", "")),
            language=str(data.get("language", "")),
            language_probability=float(data.get("language_probability") or 0.0),
            duration=float(data.get("duration") or 0.0),
            segments=segments,
            task=str(data.get("task", "transcribe")),
            engine_info=dict(data.get("engine_info") or {}),
        )


def _segment_from_dict(item: Mapping[str, Any], index: int) -> Segment:
    words = [
        Word(
            start=float(w["start"]),
            end=float(w["end"]),
            word=str(w["word"]),
            probability=float(w.get("probability", 0.0)),
        )
        for w in item.get("words") or []
    ]
    temperature = item.get("temperature")
    compression = item.get("compression_ratio")
    return Segment(
        id=int(item.get("id", index)),
        start=float(item["start"]),
        end=float(item["end"]),
        text=str(item.get("text", "")),
        avg_logprob=float(item.get("avg_logprob", 0.0)),
        no_speech_prob=float(item.get("no_speech_prob", 0.0)),
        words=words,
        seek=int(item.get("seek", 0)),
        tokens=[int(t) for t in item.get("tokens") or []],
        temperature=None if temperature is None else float(temperature),
        compression_ratio=None if compression is None else float(compression),
    )


@runtime_checkable
class Engine(Protocol):
    """A loaded Whisper model that transcribes files. Safe to share between threads."""

    name: str
    profile: str

    def transcribe(
        self,
        audio_path: AudioPath,
        options: TranscriptionOptions,
        progress_callback: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> TranscriptionResult:
        """Transcribe ``audio_path``.

        ``progress_callback(seconds_done, total)`` is called as decoding advances;
        ``should_cancel()`` is polled between decoding windows and a true value raises
        ``TranscriptionCancelled``.
        """
        ...


def check_files_language(model_files: ModelFiles, options: TranscriptionOptions) -> None:
    """``check_model_language``, then the language against the model's own vocabulary (a model
    prompted with a language token it lacks decodes garbage)."""
    check_model_language(model_files.profile, model_files.english_only, options)
    check_vocabulary_language(model_files, options.language)


def check_model_language(profile: str, english_only: bool, options: TranscriptionOptions) -> None:
    """Refuse options that an English-only model would silently get wrong.

    Such a model reports "en" for any speech and invents English text for other languages, so it
    needs ``language="en"`` stated, never detection.
    """
    if english_only and options.language != "en":
        wanted = options.language or "auto-detect"
        raise ProfileError(
            f"Model {profile!r} is English-only and cannot handle language {wanted!r}; "
            "use a multilingual profile such as 'base'."
        )


# ---------------------------------------------------------------------------------------------
# Shared post-processing
# ---------------------------------------------------------------------------------------------

# U+FFFD comes from byte-level tokens that do not form valid UTF-8; control characters would
# break subtitle files, and PostgreSQL rejects NUL in text.
_JUNK = re.compile("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]{2,}")


def clean_text(text: str) -> str:
    """Remove replacement and control characters, and the double spaces they leave."""
    return _SPACES.sub(" ", _JUNK.sub("", text))


def _finite(value: float, default: float = 0.0) -> float:
    value = float(value)  # numpy scalars become plain floats for JSON and equality
    return value if math.isfinite(value) else default


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(_finite(value, low), low), high)


def finalize_segments(segments: Iterable[Segment], *, duration: float) -> list[Segment]:
    """Clean text, drop empty segments, and make timestamps monotonic within the audio.

    Segment starts never go back in time and never overlap the previous segment; every
    timestamp lies in ``[0, duration]``; words lie inside their segment. Ids are renumbered
    from 0 and times rounded to milliseconds.
    """
    duration = max(_finite(duration), 0.0)
    result: list[Segment] = []
    previous_end = 0.0
    for segment in segments:
        text = clean_text(segment.text)
        if not text.strip():
            continue
        start = max(_clamp(segment.start, 0.0, duration), previous_end)
        end = max(_clamp(segment.end, 0.0, duration), start)

        words: list[Word] = []
        word_floor = start
        for word in segment.words:
            token = clean_text(word.word)
            if not token.strip():
                continue
            w_start = max(_clamp(word.start, start, end), word_floor)
            w_end = max(_clamp(word.end, start, end), w_start)
            words.append(
                Word(
                    start=round(w_start, 3),
                    end=round(w_end, 3),
                    word=token,
                    probability=_finite(word.probability),
                )
            )
            word_floor = w_end

        result.append(
            Segment(
                id=len(result),
                start=round(start, 3),
                end=round(end, 3),
                text=text,
                avg_logprob=_finite(segment.avg_logprob),
                no_speech_prob=_finite(segment.no_speech_prob),
                words=words,
                seek=segment.seek,
                tokens=list(segment.tokens),
                temperature=segment.temperature,
                compression_ratio=segment.compression_ratio,
            )
        )
        previous_end = end
    return result


def reported_language(
    requested: str | None, detected: str, probability: float, segments: list[Segment]
) -> tuple[str, float]:
    """The (language, probability) a result reports.

    A requested language is reported as such (probability 1). A detected one only when speech was
    transcribed: on silence, noise or music the detection is a guess about nothing (faster-whisper
    said "en" at 0.56 for digital silence, and the batched paths, which detect on the first
    speech window, reported their "en" default at 1.0), so no language is reported, "" with
    probability 0.
    """
    if requested:
        return requested, 1.0
    if not segments:
        return "", 0.0
    return detected, float(probability)


def join_text(segments: Iterable[Segment]) -> str:
    """Join segment texts into the transcript text (segments carry their own leading spaces)."""
    return " ".join("".join(segment.text for segment in segments).split())


class ProgressReporter:
    """Throttles progress callbacks and polls for cancellation.

    Engines call ``advance(seconds_done)`` as they go; the callback fires when progress moved by
    at least ``min_step`` seconds (and always at the end), and ``should_cancel`` is checked on
    every call.
    """

    def __init__(
        self,
        total: float,
        callback: ProgressCallback | None,
        should_cancel: CancelCheck | None,
        *,
        min_step: float = 1.0,
    ) -> None:
        self.total = max(total, 0.0)
        self._callback = callback
        self._should_cancel = should_cancel
        self._min_step = min_step
        self._reported = -math.inf
        self.done = 0.0

    def check_cancel(self) -> None:
        if self._should_cancel is not None and self._should_cancel():
            raise TranscriptionCancelled(seconds_done=self.done)

    def advance(self, seconds_done: float) -> None:
        self.done = min(max(self.done, seconds_done), self.total)
        if self._callback is not None and self.done - self._reported >= self._min_step:
            self._callback(self.done, self.total)
            self._reported = self.done
        self.check_cancel()

    def finish(self) -> None:
        self.done = self.total
        if self._callback is not None and self._reported < self.total:
            self._callback(self.total, self.total)
            self._reported = self.total


def begin_transcription(
    model_files: ModelFiles,
    audio_path: AudioPath,
    options: TranscriptionOptions,
    progress_callback: ProgressCallback | None,
    should_cancel: CancelCheck | None,
) -> tuple[Any, float, ProgressReporter]:
    """What every engine does first: refuse a language the model cannot handle, decode the
    audio to 16 kHz mono, and start the progress reporter (a cancel already requested stops
    here). Returns (audio, duration in seconds, reporter)."""
    from workers.engines.audio import duration_of, load_audio

    check_files_language(model_files, options)
    audio = load_audio(audio_path)
    duration = duration_of(audio)
    reporter = ProgressReporter(duration, progress_callback, should_cancel)
    reporter.check_cancel()
    return audio, duration, reporter
