"""faster-whisper engine (CTranslate2): int8 on CPU, float16 on CUDA.

Silero VAD (shipped inside faster-whisper) runs first by default, so silence and music give an
empty transcript instead of invented text. With ``batch_size`` the engine uses
``BatchedInferencePipeline``, which decodes several VAD chunks at once (about 2x faster on CPU,
several times on GPU, at more memory).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from workers.engines.base import (
    AudioPath,
    CancelCheck,
    ProgressCallback,
    ProgressReporter,
    Segment,
    TranscriptionOptions,
    TranscriptionResult,
    Word,
    begin_transcription,
    finalize_segments,
    join_text,
    reported_language,
)
from workers.engines.models import ModelFiles

logger = logging.getLogger(__name__)

ENGINE_NAME = "faster-whisper"
DEFAULT_COMPUTE_TYPES = {"cpu": "int8", "cuda": "float16"}


def segment_from_faster(seg: Any) -> Segment:
    """Our ``Segment`` from a ``faster_whisper.transcribe.Segment``."""
    return Segment(
        id=seg.id,
        start=seg.start,
        end=seg.end,
        text=seg.text,
        avg_logprob=seg.avg_logprob,
        no_speech_prob=seg.no_speech_prob,
        words=[Word(w.start, w.end, w.word, w.probability) for w in seg.words or []],
        seek=seg.seek,
        tokens=list(seg.tokens),
        temperature=seg.temperature,
        compression_ratio=seg.compression_ratio,
    )


class LoadedFasterWhisperModel:
    """One faster-whisper model loaded from local files with its device settings (shared by the
    per-job engine below and the cross-job ``BatchScheduler``)."""

    name = ENGINE_NAME

    def __init__(
        self,
        model_files: ModelFiles,
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 2,
        num_workers: int = 1,
    ) -> None:
        from faster_whisper import WhisperModel

        if device not in DEFAULT_COMPUTE_TYPES:
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}.")
        self.profile = model_files.profile
        self.model_files = model_files
        self.device = device
        self.compute_type = compute_type or DEFAULT_COMPUTE_TYPES[device]
        self.cpu_threads = cpu_threads
        self.num_workers = num_workers
        self._model = WhisperModel(
            os.fspath(model_files.path),
            device=device,
            compute_type=self.compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )

    def _log_loaded(self, message: str, batch_size: int | None) -> None:
        logger.info(
            message,
            extra={
                "engine": self.name,
                "profile": self.profile,
                "device": self.device,
                "compute_type": self.compute_type,
                "batch_size": batch_size,
            },
        )


class FasterWhisperEngine(LoadedFasterWhisperModel):
    """A loaded faster-whisper model. Thread-safe: CTranslate2 serialises or parallelises calls
    across its ``num_workers`` internally."""

    def __init__(
        self,
        model_files: ModelFiles,
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 2,
        num_workers: int = 1,
        batch_size: int | None = None,
    ) -> None:
        from faster_whisper import BatchedInferencePipeline

        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1 (or None for sequential decoding).")
        super().__init__(
            model_files,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
        self.batch_size = batch_size
        self._batched = BatchedInferencePipeline(self._model) if batch_size else None
        # BatchedInferencePipeline keeps per-call state on itself (last_speech_timestamp).
        self._batched_lock = threading.Lock()
        self._log_loaded("engine loaded", batch_size)

    def transcribe(
        self,
        audio_path: AudioPath,
        options: TranscriptionOptions,
        progress_callback: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> TranscriptionResult:
        audio, duration, reporter = begin_transcription(
            self.model_files, audio_path, options, progress_callback, should_cancel
        )

        kwargs: dict[str, Any] = {
            "language": options.language,
            "task": options.task,
            "beam_size": options.beam_size,
            "word_timestamps": options.word_timestamps,
            "initial_prompt": options.initial_prompt,
            "vad_filter": options.vad,
        }
        # The batched pipeline needs VAD chunks; without VAD it only handles < 30 s of audio.
        batched = self._batched is not None and options.vad
        raw: list[Segment] = []
        language, language_probability = "", 0.0
        duration_after_vad = 0.0
        if duration > 0:
            if batched:
                assert self._batched is not None
                with self._batched_lock:
                    # The pipeline carries the last word's end from batch to batch on itself and
                    # resets it only when a call runs to its end: a cancelled or failed call left
                    # its own, which would skew this job's first word timings.
                    self._batched.last_speech_timestamp = 0.0
                    segments, info = self._batched.transcribe(
                        audio, batch_size=self.batch_size, **kwargs
                    )
                    raw = self._collect(segments, reporter)
            else:
                segments, info = self._model.transcribe(audio, **kwargs)
                raw = self._collect(segments, reporter)
            language = info.language
            language_probability = float(info.language_probability)
            duration_after_vad = float(info.duration_after_vad)
        reporter.finish()

        final = finalize_segments(raw, duration=duration)
        language, language_probability = reported_language(
            options.language, language, language_probability, final
        )
        return TranscriptionResult(
            text=join_text(final),
            language=language,
            language_probability=round(language_probability, 4),
            duration=round(duration, 3),
            segments=final,
            task=options.task,
            engine_info=self._engine_info(options, batched, duration_after_vad),
        )

    @staticmethod
    def _collect(segments: Any, reporter: ProgressReporter) -> list[Segment]:
        # The generator decodes lazily, one window (or batch) at a time: cancellation is
        # checked between them.
        raw: list[Segment] = []
        for seg in segments:
            raw.append(segment_from_faster(seg))
            reporter.advance(seg.end)
        return raw

    def _engine_info(
        self, options: TranscriptionOptions, batched: bool, duration_after_vad: float
    ) -> dict[str, Any]:
        import ctranslate2
        import faster_whisper

        return {
            "engine": self.name,
            "engine_version": faster_whisper.__version__,
            "ctranslate2_version": ctranslate2.__version__,
            "model_profile": self.profile,
            "model_sha256": self.model_files.sha256,
            "device": self.device,
            "compute_type": self.compute_type,
            "cpu_threads": self.cpu_threads,
            "num_workers": self.num_workers,
            "batched": batched,
            "batch_size": self.batch_size if batched else None,
            "beam_size": options.beam_size,
            "vad": options.vad,
            "word_timestamps": options.word_timestamps,
            "language_requested": options.language,
            "duration_after_vad": round(duration_after_vad, 3),
        }
