"""faster-whisper engine (CTranslate2): int8 on CPU, float16 on CUDA.

Silero VAD (shipped inside faster-whisper) runs first by default, so silence and music give an
empty transcript instead of invented text. With ``batch_size`` the engine runs
``BatchedInferencePipeline``'s steps, which decode several VAD chunks at once (about 2x faster on
CPU, several times on GPU, at more memory), one batch at a time: a batch's features are made when
it is decoded, and cancellation is checked after the VAD and between batches.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from typing import Any

import numpy as np

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
    fit_prompt,
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


def fit_faster_prompt(
    model: Any, hotwords: str | None, initial_prompt: str | None
) -> tuple[str | None, str | None]:
    """``fit_prompt`` with a faster-whisper model's own tokenizer."""
    return fit_prompt(
        lambda text: model.hf_tokenizer.encode(text, add_special_tokens=False).ids,
        model.hf_tokenizer.decode,
        hotwords,
        initial_prompt,
    )


def batched_decode_setup(
    model: Any,
    *,
    language: str,
    task: str,
    beam_size: int,
    word_timestamps: bool,
    initial_prompt: str | None,
    hotwords: str | None = None,
) -> tuple[Any, Any]:
    """The tokenizer and faster-whisper decoding options ``BatchedInferencePipeline.transcribe``
    makes for these settings (its defaults read from its signature rather than copied), for the
    paths that drive the pipeline's steps themselves (this engine's, the ``BatchScheduler``)."""
    from faster_whisper import BatchedInferencePipeline
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import TranscriptionOptions as FwOptions
    from faster_whisper.transcribe import get_suppressed_tokens

    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task=task, language=language
    )
    hotwords, initial_prompt = fit_faster_prompt(model, hotwords, initial_prompt)
    default = {
        name: parameter.default
        for name, parameter in inspect.signature(
            BatchedInferencePipeline.transcribe
        ).parameters.items()
    }
    fw_options = FwOptions(
        beam_size=beam_size,
        best_of=default["best_of"],
        patience=default["patience"],
        length_penalty=default["length_penalty"],
        repetition_penalty=default["repetition_penalty"],
        no_repeat_ngram_size=default["no_repeat_ngram_size"],
        log_prob_threshold=default["log_prob_threshold"],
        no_speech_threshold=default["no_speech_threshold"],
        compression_ratio_threshold=default["compression_ratio_threshold"],
        temperatures=list(default["temperature"])[:1],
        initial_prompt=initial_prompt,
        prefix=None,
        suppress_blank=default["suppress_blank"],
        suppress_tokens=get_suppressed_tokens(tokenizer, default["suppress_tokens"]),
        prepend_punctuations=default["prepend_punctuations"],
        append_punctuations=default["append_punctuations"],
        max_new_tokens=None,
        hotwords=hotwords,
        word_timestamps=word_timestamps,
        # What BatchedInferencePipeline.transcribe fixes for batched decoding:
        hallucination_silence_threshold=None,
        condition_on_previous_text=False,
        clip_timestamps=[],
        prompt_reset_on_temperature=0.5,
        multilingual=False,
        without_timestamps=default["without_timestamps"],
        max_initial_timestamp=0.0,
    )
    return tokenizer, fw_options


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

        from workers.engines.silero import use_streaming_onnx

        if device not in DEFAULT_COMPUTE_TYPES:
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}.")
        use_streaming_onnx()  # the library's VAD, the same probabilities in bounded memory
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
            "vad_filter": options.vad,
        }
        kwargs["hotwords"], kwargs["initial_prompt"] = fit_faster_prompt(
            self._model, options.hotwords, options.initial_prompt
        )
        # The batched pipeline needs VAD chunks; without VAD it only handles < 30 s of audio.
        batched = self._batched is not None and options.vad
        raw: list[Segment] = []
        language, language_probability = "", 0.0
        duration_after_vad = 0.0
        if duration > 0 and batched:
            # Handed over, not kept here: once split into windows the decoded file can go.
            handed, audio = [audio], None
            language, language_probability, duration_after_vad, raw = self._transcribe_batched(
                handed, options, reporter
            )
        elif duration > 0:
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

    def _transcribe_batched(
        self, handed: list[Any], options: TranscriptionOptions, reporter: ProgressReporter
    ) -> tuple[str, float, float, list[Segment]]:
        """``BatchedInferencePipeline.transcribe``'s steps, one batch at a time: the same VAD
        split into <= 30 s windows, the same language detection, tokenizer, options and batches,
        and its own ``forward`` per batch, so the transcript is the one the pipeline gives.

        The pipeline makes the features of every window (and two more copies of them) before it
        decodes the first batch: 1.2 GB per hour of speech with ``base``, and nearly a minute of
        a one-hour file before its first cancellation check. Here a batch's features are made
        when it is decoded and dropped after it, each window's audio with them, and cancellation
        is checked after the VAD and before every batch. ``handed`` holds the decoded file, taken
        out here so that nothing keeps it once it is split. Returns (language, probability,
        speech seconds, segments).
        """
        from faster_whisper.transcribe import restore_speech_timestamps

        from workers.preparation import SAMPLE_RATE, split_speech

        assert self._batched is not None and self.batch_size is not None
        clips, chunks, metadata = split_speech(handed.pop(), vad=True)
        reporter.check_cancel()
        speech_seconds = sum(clip["end"] - clip["start"] for clip in clips) / SAMPLE_RATE
        if not speech_seconds:
            return options.language or "", 0.0, 0.0, []
        extractor = self._model.feature_extractor
        # Unpadded features, made once for the detection and then decoded with their batch.
        made: dict[int, Any] = {}

        def features(index: int) -> Any:
            if index not in made:
                made[index] = extractor(chunks[index])[..., :-1]
            chunks[index] = None
            return made[index]

        language, probability = self._language_of(options, features, len(chunks))
        tokenizer, fw_options = batched_decode_setup(
            self._model,
            language=language,
            task=options.task,
            beam_size=options.beam_size,
            word_timestamps=options.word_timestamps,
            initial_prompt=options.initial_prompt,
            hotwords=options.hotwords,
        )

        def batches() -> Any:
            from faster_whisper.audio import pad_or_trim
            from faster_whisper.transcribe import Segment as FwSegment
            from faster_whisper.transcribe import Word as FwWord

            assert self._batched is not None and self.batch_size is not None
            number = 0
            for start in range(0, len(metadata), self.batch_size):
                reporter.check_cancel()
                indexes = range(start, min(start + self.batch_size, len(metadata)))
                stacked = np.stack([pad_or_trim(features(index)) for index in indexes])
                for index in indexes:
                    made.pop(index, None)
                results = self._batched.forward(
                    stacked, tokenizer, metadata[indexes.start : indexes.stop], fw_options
                )
                del stacked
                for result in results:
                    for segment in result:
                        number += 1
                        yield FwSegment(
                            seek=segment["seek"],
                            id=number,
                            text=segment["text"],
                            start=round(segment["start"], 3),
                            end=round(segment["end"], 3),
                            words=(
                                [FwWord(**word) for word in segment["words"]]
                                if fw_options.word_timestamps
                                else None
                            ),
                            tokens=segment["tokens"],
                            avg_logprob=segment["avg_logprob"],
                            no_speech_prob=segment["no_speech_prob"],
                            compression_ratio=segment["compression_ratio"],
                            temperature=fw_options.temperatures[0],
                        )

        with self._batched_lock:
            # The pipeline carries the last word's end from batch to batch on itself: each job
            # starts from 0, not from where a cancelled or failed call stopped.
            self._batched.last_speech_timestamp = 0.0
            try:
                raw = self._collect(
                    restore_speech_timestamps(batches(), clips, SAMPLE_RATE), reporter
                )
            finally:
                self._batched.last_speech_timestamp = 0.0
        return language, probability, speech_seconds, raw

    def _language_of(
        self, options: TranscriptionOptions, features: Any, windows: int
    ) -> tuple[str, float]:
        """The requested language, or the one ``BatchedInferencePipeline.transcribe`` detects:
        on the first 30 s of the windows' features laid end to end (a dummy frame added for a
        file with less), with the pipeline's defaults."""
        if options.language is not None:
            return options.language, 1.0
        if not self._model.model.is_multilingual:
            return "en", 1.0
        frames_wanted = self._model.feature_extractor.nb_max_frames
        parts: list[Any] = []
        for index in range(windows):
            parts.append(features(index))
            if sum(part.shape[-1] for part in parts) >= frames_wanted:
                break
        parts.append(np.full((self._model.model.n_mels, 1), -1.5, dtype="float32"))
        language, probability, _all = self._model.detect_language(
            features=np.concatenate(parts, axis=1)[..., :frames_wanted]
        )
        return language, float(probability)

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
