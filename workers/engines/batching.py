"""Cross-job batching: one faster-whisper model fed with the speech windows of many jobs at once.

``BatchScheduler`` is an Engine (``name``, ``profile``, ``transcribe``) shared by every job thread
of a worker (Celery ``--pool threads``). Work is split where it runs best:

* in each **job thread** (the caller of ``transcribe``): decoding, Silero VAD, the log-mel features
  of each <= 30 s window, and after decoding the word-timing heuristics and timestamp
  restoration. This is NumPy/ONNX/Python work that would otherwise starve the model; spread over
  job threads it runs beside the model. With ``prepare_processes`` the decoding, VAD and features
  run in a pool of processes instead (``workers.preparation``): in threads they hold the GIL, and
  on a 16-core GPU node they fed the model at 650-750x real time against 2400-2600x in processes.
* in the **scheduler thread** (``model_streams`` of them, each forming its own batches from the
  one queue): only model work. It takes pending windows from the shared queue,
  groups those whose decoding options match (one prompt, one tokenizer per batch), waits at most
  ``max_wait_ms`` to fill a batch up to ``batch_size``, runs one batched encode + generate (and one
  alignment pass for word timestamps) and hands each window's output back to its job. Language
  detection (jobs whose language is unknown: their first window) is batched the same way, in
  batches of its own: one encode and one detection step for many jobs.

The steps are faster-whisper's own (``get_speech_timestamps``, ``collect_chunks``, the feature
extractor, ``BatchedInferencePipeline.generate_segment_batched``, ``_split_segments_by_timestamps``,
``find_alignment``, ``add_word_timestamps``, ``restore_speech_timestamps``), called with the same
options as ``BatchedInferencePipeline.transcribe``, so a job's transcript matches what the library
gives for that file alone; only the grouping differs.

Each job keeps its own progress (as its windows complete), cancellation (its pending windows leave
the queue at once), time limit (``should_cancel`` may raise) and failure: a batch that raises is
retried window by window so only the job whose window fails gets the error. On out-of-memory the
batch size is halved (never below 1) and the batch retried.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import subprocess
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from math import ceil
from typing import Any

import numpy as np

from workers.engines.base import (
    AudioPath,
    CancelCheck,
    ProgressCallback,
    ProgressReporter,
    TranscriptionOptions,
    TranscriptionResult,
    check_files_language,
    finalize_segments,
    join_text,
    reported_language,
)
from workers.engines.faster import (
    LoadedFasterWhisperModel,
    batched_decode_setup,
    segment_from_faster,
)
from workers.engines.models import ModelFiles
from workers.preparation import (
    CHUNK_SECONDS,
    SAMPLE_RATE,
    PreparationPool,
    PreparedAudio,
    prepare_audio,
    shared_pool,
    warm_noise,
    window_features,
)

logger = logging.getLogger(__name__)

DEFAULT_CPU_BATCH_SIZE = 8
DEFAULT_MAX_WAIT_MS = 10.0
# Upper bound of the automatic (GPU memory) choice. Measured on an H200 with tiny.en (prepared
# windows, the model alone, docs/benchmarks.md): batch 32 decoded 2114x real time, 64 1202x and
# 256 343x, with the GPU mostly idle. The likely cause (not yet confirmed): past 32 windows x 5
# beams CTranslate2's per-step buffers outgrow its caching allocator's largest bin (16 MiB by
# default), so every decoding step pays for cudaMalloc/cudaFree; CT2_CUDA_CACHING_ALLOCATOR_CONFIG
# raises that bin (docs/gpu.md).
MAX_AUTO_BATCH_SIZE = 32
# GPU memory one window needs in a batch (float16, beam 5, word timestamps). tiny.en: measured on
# an H200, the sampled peak grew from 727 MiB at batch 1 to 1399 MiB at batch 64 (~11 MiB per
# window). base: scaled from tiny.en by model width and depth, not yet measured. An estimate that
# is too low costs one out-of-memory halving.
GPU_MB_PER_WINDOW = {"tiny.en": 12, "base": 30}
GPU_MB_PER_WINDOW_DEFAULT = 100
# Part of the free GPU memory the batches may use; the rest stays for fragmentation and
# CTranslate2's own workspace.
GPU_MEMORY_SHARE = 0.6
POLL_SECONDS = 0.2
# How long ``warm_model`` waits for its streams' batches before it gives up on them (a call that
# hangs in CTranslate2 must not hold the preload thread, and the profiles after it, for ever).
WARM_TIMEOUT_SECONDS = 300.0


# Seconds a single window that ran out of memory waits before each new try (then its job fails).
OUT_OF_MEMORY_WAITS = (0.5, 2.0, 5.0)
OUT_OF_MEMORY_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "memoryallocation")


def is_out_of_memory(exc: BaseException) -> bool:
    """CTranslate2 raises RuntimeError("CUDA failed with error out of memory") on the GPU (or a
    cuBLAS/CUDA allocation status when the failed allocation was a library's workspace) and
    std::bad_alloc (MemoryError) on the CPU."""
    message = str(exc).lower()
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(text in message for text in OUT_OF_MEMORY_MESSAGES)
    )


def free_gpu_memory_mb(device_index: int = 0) -> int | None:
    """Free memory of a CUDA device in MiB (torch when it sees CUDA, else nvidia-smi), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info(device_index)
            return int(free // (1024 * 1024))
    except Exception:  # noqa: S110 - torch absent or built without CUDA: try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", f"-i={device_index}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def choose_batch_size(
    setting: int | None,
    *,
    device: str,
    profile: str,
    free_mb: int | None = None,
    streams: int = 1,
) -> int:
    """The initial batch size: the setting when given (> 0); on CUDA, from free GPU memory
    shared by ``streams`` batches in flight at once; on CPU (or when the free memory cannot be
    read) ``DEFAULT_CPU_BATCH_SIZE``."""
    if setting:
        return max(1, int(setting))
    if device != "cuda":
        return DEFAULT_CPU_BATCH_SIZE
    free_mb = free_gpu_memory_mb() if free_mb is None else free_mb
    if free_mb is None:
        return DEFAULT_CPU_BATCH_SIZE
    per_window = GPU_MB_PER_WINDOW.get(profile, GPU_MB_PER_WINDOW_DEFAULT)
    budget = free_mb * GPU_MEMORY_SHARE / max(1, streams)
    return max(1, min(MAX_AUTO_BATCH_SIZE, int(budget // per_window)))


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for windows to share one batch: one prompt and one tokenizer."""

    language: str
    task: str
    beam_size: int
    word_timestamps: bool
    initial_prompt: str | None
    hotwords: str | None = None


# The key of language-detection items: one 30 s window per job whose language is unknown,
# batched like decoding (one encoder pass and one decoder step per batch, not per job).
DETECT_LANGUAGE = BatchKey(
    language="", task="detect-language", beam_size=0, word_timestamps=False, initial_prompt=None
)

_job_numbers = itertools.count()


@dataclass
class _Job:
    key: BatchKey
    cond: threading.Condition
    # Batches take the oldest job's windows first: jobs finish in arrival order (the first
    # result after about one job's work) instead of all together at the end of a burst.
    number: int = field(default_factory=lambda: next(_job_numbers))
    results: dict[int, Any] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False


@dataclass
class _Item:
    job: _Job
    index: int
    features: Any
    metadata: dict[str, Any]
    submitted: float


@dataclass
class _Output:
    """One window's decoded segments (faster-whisper's dicts) and, with word timestamps, its
    alignment; the job thread finishes the word timings."""

    subsegments: list[dict[str, Any]]
    segment_size: int
    alignment: list[dict[str, Any]] | None


class _Aligned:
    """Stands in for the model in ``WhisperModel.add_word_timestamps`` with an alignment the
    scheduler already computed, so the word-timing heuristics run in the job thread, in the job's
    own window order (its ``last_speech_timestamp`` chain), exactly as the library runs them."""

    def __init__(self, alignment: list[dict[str, Any]], frames_per_second: float) -> None:
        self._alignment = alignment
        self.frames_per_second = frames_per_second

    def find_alignment(self, *_args: Any, **_kwargs: Any) -> list[list[dict[str, Any]]]:
        return [self._alignment]


class BatchScheduler(LoadedFasterWhisperModel):
    """A faster-whisper model shared by many job threads through one batching queue."""

    def __init__(
        self,
        model_files: ModelFiles,
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 2,
        num_workers: int = 1,
        batch_size: int | None = None,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        prepare_processes: int = 0,
        model_streams: int = 1,
        vad_engine: str = "auto",
        vad_device: str = "cpu",
    ) -> None:
        from faster_whisper import BatchedInferencePipeline

        self.model_streams = max(1, int(model_streams))
        super().__init__(
            model_files,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            # CTranslate2 runs concurrent calls in parallel only with as many workers.
            num_workers=max(num_workers, self.model_streams),
        )
        self.max_wait = max(max_wait_ms, 0.0) / 1000.0
        # Used only for generate_segment_batched, which keeps no state on the pipeline.
        self._pipeline = BatchedInferencePipeline(self._model)
        self.initial_batch_size = choose_batch_size(
            batch_size, device=device, profile=self.profile, streams=self.model_streams
        )
        self.batch_size = self.initial_batch_size
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._setup_lock = threading.Lock()
        self._setups: dict[BatchKey, tuple[Any, Any]] = {}
        self._stats: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._jobs_per_batch: Counter[int] = Counter()
        self._files_by_vad: Counter[str] = Counter()  # files prepared, by the VAD that split them
        self._in_flight = 0  # batches in a model call now (at most model_streams)
        self._max_in_flight = 0
        # Decoding, VAD and features in spawned processes (workers/preparation.py), or in the
        # job threads when 0.
        self._preparation = self._start_preparation(prepare_processes, vad_engine, vad_device)
        # One scheduler thread per model stream: each forms and runs its own batches from the
        # shared queue, so one batch's host-side work (Python between model calls, CTranslate2's
        # decoding loop) overlaps another's GPU work.
        self._threads = [
            threading.Thread(target=self._run, name=f"whisper-batcher-{index}", daemon=True)
            for index in range(self.model_streams)
        ]
        for thread in self._threads:
            thread.start()
        self._log_loaded("batching engine loaded", self.batch_size)

    # ---- job side ------------------------------------------------------------------------------
    def transcribe(
        self,
        audio_path: AudioPath,
        options: TranscriptionOptions,
        progress_callback: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> TranscriptionResult:
        from faster_whisper.transcribe import restore_speech_timestamps

        check_files_language(self.model_files, options)
        prepared = self._prepare(audio_path, options.vad, should_cancel)
        reporter = ProgressReporter(prepared.duration, progress_callback, should_cancel)
        reporter.check_cancel()
        language, language_probability = options.language or "", 0.0
        duration_after_vad = prepared.speech_seconds
        segments: list[Any] = []
        if duration_after_vad > 0:
            features = prepared.take_features(0, self._model.feature_extractor)
            if options.language is None:
                language, language_probability = self._detect_language(features, reporter)
            reporter.check_cancel()
            key = BatchKey(
                language=language,
                task=options.task,
                beam_size=options.beam_size,
                word_timestamps=options.word_timestamps,
                initial_prompt=options.initial_prompt,
                hotwords=options.hotwords,
            )
            raw = self._decode_job(key, prepared, features, reporter)
            segments = list(restore_speech_timestamps(raw, prepared.clips, SAMPLE_RATE))
        reporter.finish()

        final = finalize_segments(
            [segment_from_faster(s) for s in segments], duration=prepared.duration
        )
        language, language_probability = reported_language(
            options.language, language, language_probability, final
        )
        return TranscriptionResult(
            text=join_text(final),
            language=language,
            language_probability=round(float(language_probability), 4),
            duration=round(prepared.duration, 3),
            segments=final,
            task=options.task,
            engine_info=self._engine_info(options, duration_after_vad),
        )

    def _start_preparation(
        self, processes: int, vad_engine: str, vad_device: str
    ) -> PreparationPool | None:
        """The preparation pool, checked by starting a process; when none can start, an error is
        logged and the job threads prepare audio (slower, but no job fails for it). The pool's
        processes run ``vad_engine``'s VAD (``workers.engines.silero``); the job threads always
        run faster-whisper's own (ONNX Runtime)."""
        if processes <= 0:
            return None
        try:
            pool, _new = shared_pool(processes, vad_engine, vad_device)
        except RuntimeError:
            logger.exception("audio preparation stays in the job threads")
            self._stats["preparation_unavailable"] += 1
            return None
        return pool

    def warm(self, *, model: bool | None = None) -> int:
        """Spawn every preparation process now (``PreparationPool.start_all``, which waits for
        nothing), then, on CUDA or when ``model`` is true, ``warm_model``; how many preparation
        processes the pool has (0 without one). The model itself is loaded when the scheduler is
        made. ``stats()`` counts the model's warm-ups and their failures."""
        processes = self._preparation.start_all() if self._preparation is not None else 0
        if (self.device == "cuda") if model is None else model:
            self.warm_model()
        return processes

    def warm_model(self, max_new_tokens: int | None = None) -> bool:
        """One batch of ``batch_size`` windows on every model stream at once, through
        ``_decode_batch`` with word timestamps, after one language-detection batch for a
        multilingual model. The windows hold faint noise, and the end of text is suppressed, so
        each decodes as long as the decoding options let it: with ``max_new_tokens`` None (the
        model's 448-token limit) CTranslate2 stops at half that, 224 tokens, the most any window
        can take; a real 30 s window of speech holds 70-100. Nothing is delivered, and only
        ``warm_ups`` / ``warm_up_failures`` are counted.

        A CUDA process pays one-off costs in its first batches: kernels loaded on first use,
        cuBLAS handles, CTranslate2's caching allocator growing. On an H100 the first 100-job
        burst of a process ran at 2 400-2 620x real time against 3 017-3 207x for the next one,
        with every preparation process already started (docs/benchmarks.md). This pays those
        costs before the first job. On the CPU there is little to warm.

        Returns whether every stream's batch ran. A failure is logged and counted, not raised:
        jobs then pay the cost as before. An out-of-memory error here leaves the batch size
        alone, since jobs' batches may be holding the memory; their own batches halve it if it
        is too large."""
        started = time.monotonic()
        failures: list[BaseException] = []
        try:
            setup, items = self._warm_up_batch(max_new_tokens, started)
        except Exception as exc:
            failures.append(exc)
        else:
            multilingual = bool(self._model.model.is_multilingual)

            def stream() -> None:
                try:
                    if multilingual:
                        self._detect_batch(items)
                    self._decode_batch(items, setup=setup)
                except BaseException as exc:  # a thread's end: recorded, never lost
                    failures.append(exc)

            threads = [
                threading.Thread(target=stream, name=f"whisper-warm-{index}", daemon=True)
                for index in range(self.model_streams)
            ]
            for thread in threads:
                thread.start()
            deadline = started + WARM_TIMEOUT_SECONDS
            for thread in threads:
                thread.join(timeout=max(deadline - time.monotonic(), 0.0))
            hung = sum(thread.is_alive() for thread in threads)
            if hung:
                failures.append(
                    TimeoutError(f"{hung} still running after {WARM_TIMEOUT_SECONDS:.0f} s")
                )
        if failures:
            self._count("warm_up_failures")
            logger.warning(
                "warming the model failed (%d of %d streams): %s",
                len(failures),
                self.model_streams,
                failures[0],
            )
            return False
        self._count("warm_ups")
        logger.info(
            "warmed the model: %d streams, batches of %d, in %.1f s",
            self.model_streams,
            self.batch_size,
            time.monotonic() - started,
        )
        return True

    def _warm_up_batch(
        self, max_new_tokens: int | None, submitted: float
    ) -> tuple[tuple[Any, Any], list[_Item]]:
        """``warm_model``'s decoding setup (a copy of an English job's, with the end of text
        suppressed and ``max_new_tokens``) and ``batch_size`` windows of noise."""
        key = BatchKey(
            language="en",
            task="transcribe",
            beam_size=TranscriptionOptions().beam_size,
            word_timestamps=True,
            initial_prompt=None,
        )
        tokenizer, options = self._setup(key)  # cached for the jobs that use it; forced below
        forced = dataclasses.replace(
            options,
            suppress_tokens=[*options.suppress_tokens, tokenizer.eot],
            max_new_tokens=max_new_tokens,
        )
        features = window_features(self._model.feature_extractor, warm_noise(CHUNK_SECONDS))
        job = _Job(key=key, cond=threading.Condition())
        metadata = {"duration": float(CHUNK_SECONDS), "offset": 0.0}
        items = [
            _Item(job, index, features, metadata, submitted) for index in range(self.batch_size)
        ]
        return (tokenizer, forced), items

    def _prepare(
        self, audio_path: AudioPath, vad: bool, should_cancel: CancelCheck | None
    ) -> PreparedAudio:
        """Decode, VAD-split and (in a preparation process) make the features of a file; in the
        job's thread when there is no pool, or when the file was too long to prepare at once."""
        if self._preparation is not None:
            prepared = self._preparation.prepare(
                audio_path, vad, self._model.feat_kwargs, should_cancel
            )
            self._count_prepared(prepared)
            if prepared.features is not None:
                return prepared
            # Too long to hold every window's features: decoded again here, windows made from
            # the clips the process found (no second VAD pass), features as the job goes.
            self._count("long_files_prepared_in_thread")
            return prepare_audio(audio_path, vad, clips=prepared.clips)
        prepared = prepare_audio(audio_path, vad)
        self._count_prepared(prepared)
        return prepared

    def _detect_language(self, features: Any, reporter: ProgressReporter) -> tuple[str, float]:
        """The language of the job's first window, detected in a batch with other jobs' first
        windows (``WhisperModel.detect_language`` on one window: the most probable language)."""
        job = _Job(key=DETECT_LANGUAGE, cond=threading.Condition())
        try:
            self._submit(_Item(job, 0, features, {}, time.monotonic()))
            language, probability = self._wait(job, 0, reporter)
        finally:
            self._forget(job)
        return language, probability

    def _decode_job(
        self,
        key: BatchKey,
        prepared: PreparedAudio,
        first_features: Any,
        reporter: ProgressReporter,
    ) -> list[Any]:
        """Feed this job's windows to the queue (at most two batches ahead, so features are
        computed while earlier windows decode and memory stays bounded) and collect the decoded
        segments in window order."""
        from faster_whisper import WhisperModel
        from faster_whisper.transcribe import Segment as FwSegment
        from faster_whisper.transcribe import Word as FwWord

        tokenizer, fw_options = self._setup(key)
        job = _Job(key=key, cond=threading.Condition())
        next_index = 0
        pending_features: Any = first_features
        last_speech_timestamp = 0.0
        segments: list[Any] = []
        try:
            metadata = prepared.metadata
            for index, meta in enumerate(metadata):
                while next_index < len(metadata) and next_index - index < 2 * self.batch_size:
                    features = (
                        pending_features
                        if pending_features is not None
                        else prepared.take_features(next_index, self._model.feature_extractor)
                    )
                    pending_features = None
                    self._submit(
                        _Item(job, next_index, features, metadata[next_index], time.monotonic())
                    )
                    next_index += 1
                output = self._wait(job, index, reporter)
                if key.word_timestamps and output.subsegments and output.alignment is not None:
                    aligned = _Aligned(output.alignment, self._model.frames_per_second)
                    last_speech_timestamp = WhisperModel.add_word_timestamps(
                        aligned,
                        [output.subsegments],
                        tokenizer,
                        None,
                        [output.segment_size],
                        fw_options.prepend_punctuations,
                        fw_options.append_punctuations,
                        last_speech_timestamp,
                    )
                for sub in output.subsegments:
                    segments.append(
                        FwSegment(
                            id=len(segments) + 1,
                            seek=sub["seek"],
                            start=round(sub["start"], 3),
                            end=round(sub["end"], 3),
                            text=sub["text"],
                            tokens=sub["tokens"],
                            avg_logprob=sub["avg_logprob"],
                            no_speech_prob=sub["no_speech_prob"],
                            compression_ratio=sub["compression_ratio"],
                            temperature=fw_options.temperatures[0],
                            words=(
                                [FwWord(**word) for word in sub.get("words", [])]
                                if key.word_timestamps
                                else None
                            ),
                        )
                    )
                segments_end = meta.get("segments") or []
                reporter.advance(segments_end[-1]["end"] / SAMPLE_RATE if segments_end else 0.0)
        finally:
            self._forget(job)
        return segments

    def _wait(self, job: _Job, index: int, reporter: ProgressReporter) -> Any:
        while True:
            with job.cond:
                if job.error is not None:
                    raise job.error
                if index in job.results:
                    return job.results.pop(index)
                job.cond.wait(POLL_SECONDS)
            # Outside the lock: should_cancel may query the database or raise a time limit.
            reporter.check_cancel()

    def _submit(self, item: _Item) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("The batching engine is closed.")
            self._queue.append(item)
            self._cond.notify_all()

    def _forget(self, job: _Job) -> None:
        """Drop the job's windows still queued (cancelled, failed or finished)."""
        with job.cond:
            job.done = True
        with self._cond:
            before = len(self._queue)
            self._queue = deque(item for item in self._queue if item.job is not job)
            self._stats["dropped_windows"] += before - len(self._queue)

    def _setup(self, key: BatchKey) -> tuple[Any, Any]:
        """The tokenizer and faster-whisper options of a batch key, with the values
        ``BatchedInferencePipeline.transcribe`` uses by default (cached per key)."""
        with self._setup_lock:
            cached = self._setups.get(key)
            if cached is not None:
                return cached
            setup = batched_decode_setup(
                self._model,
                language=key.language,
                task=key.task,
                beam_size=key.beam_size,
                word_timestamps=key.word_timestamps,
                initial_prompt=key.initial_prompt,
                hotwords=key.hotwords,
            )
            self._setups[key] = setup
            return setup

    # ---- scheduler side ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._process(batch)

    def _next_batch(self) -> list[_Item] | None:
        """Up to ``batch_size`` windows sharing the oldest window's key, oldest job first, waiting
        at most ``max_wait`` after the oldest window was queued for the batch to fill."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                first = self._queue[0]
                same = [item for item in self._queue if item.job.key == first.job.key]
                remaining = first.submitted + self.max_wait - time.monotonic()
                if len(same) >= self.batch_size or remaining <= 0:
                    same.sort(key=lambda item: (item.job.number, item.index))
                    batch = same[: self.batch_size]
                    taken = {id(item) for item in batch}
                    self._queue = deque(item for item in self._queue if id(item) not in taken)
                    return batch
                self._cond.wait(remaining)

    def _process(self, items: list[_Item], *, memory_waits: int = 0) -> None:
        items = [item for item in items if not item.job.done]
        if not items:
            return
        started = time.monotonic()
        detecting = items[0].job.key == DETECT_LANGUAGE
        try:
            outputs = self._model_call(items, detecting)
        except Exception as exc:
            if is_out_of_memory(exc) and len(items) > 1:
                self._out_of_memory(len(items), exc)
                half = len(items) // 2
                self._process(items[:half])
                self._process(items[half:])
            elif is_out_of_memory(exc) and memory_waits < len(OUT_OF_MEMORY_WAITS):
                # One window that does not fit now: the other streams' batches (or another
                # process on the GPU) hold the memory, and free it within a batch's time. Wait
                # and try again rather than fail a job for a shortage that passes.
                self._count("out_of_memory_waits")
                logger.warning(
                    "out of memory with one window; trying again in %.1f s",
                    OUT_OF_MEMORY_WAITS[memory_waits],
                )
                time.sleep(OUT_OF_MEMORY_WAITS[memory_waits])
                self._process(items, memory_waits=memory_waits + 1)
            elif len(items) > 1:
                # Which window broke the batch is unknown: one at a time, so only its job fails.
                logger.warning("batch of %d windows failed; retrying them one by one", len(items))
                self._count("isolation_retries")
                for item in items:
                    self._process([item])
            else:
                logger.warning("window %d of a job failed: %s", items[0].index, exc)
                self._count("failed_windows")
                self._deliver_error(items[0].job, exc)
            return
        self._record_batch(items, time.monotonic() - started, detecting=detecting)
        for item, output in zip(items, outputs, strict=True):
            with item.job.cond:
                if not item.job.done:
                    item.job.results[item.index] = output
                item.job.cond.notify_all()

    def _model_call(self, items: list[_Item], detecting: bool) -> list[Any]:
        """One batch's model work, counted while it runs (batches in flight at once)."""
        with self._cond:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return self._detect_batch(items) if detecting else self._decode_batch(items)
        finally:
            with self._cond:
                self._in_flight -= 1

    def _detect_batch(self, items: list[_Item]) -> list[tuple[str, float]]:
        """One batched encode and language-detection step; each window's most probable
        language and its probability, as ``WhisperModel.detect_language`` gives for one."""
        encoder_output = self._model.encode(np.stack([item.features for item in items]))
        results = self._model.model.detect_language(encoder_output)
        return [(str(result[0][0][2:-2]), float(result[0][1])) for result in results]

    def _decode_batch(
        self, items: list[_Item], setup: tuple[Any, Any] | None = None
    ) -> list[_Output]:
        """One batched encode + generate (and alignment) for windows sharing a key; what
        ``BatchedInferencePipeline.forward`` does, minus the word-timing heuristics. ``setup``
        (tokenizer, options) replaces the key's own (``warm_model``)."""
        from faster_whisper.transcribe import get_compression_ratio

        key = items[0].job.key
        tokenizer, fw_options = setup or self._setup(key)
        features = np.stack([item.features for item in items])
        encoder_output, outputs = self._pipeline.generate_segment_batched(
            features, tokenizer, fw_options
        )
        fps = self._model.frames_per_second
        results: list[_Output] = []
        for item, output in zip(items, outputs, strict=True):
            duration = item.metadata["duration"]
            segment_size = int(ceil(duration) * fps)
            subsegments, _seek, _single = self._model._split_segments_by_timestamps(
                tokenizer=tokenizer,
                tokens=output["tokens"],
                time_offset=item.metadata["offset"],
                segment_size=segment_size,
                segment_duration=duration,
                seek=0,
            )
            results.append(
                _Output(
                    subsegments=[
                        {
                            "text": tokenizer.decode(sub["tokens"]),
                            "avg_logprob": output["avg_logprob"],
                            "no_speech_prob": output["no_speech_prob"],
                            "tokens": sub["tokens"],
                            "start": sub["start"],
                            "end": sub["end"],
                            "compression_ratio": get_compression_ratio(
                                tokenizer.decode(sub["tokens"])
                            ),
                            "seek": int(item.metadata["offset"] * fps),
                        }
                        for sub in subsegments
                    ],
                    segment_size=segment_size,
                    alignment=None,
                )
            )
        if key.word_timestamps:
            text_tokens = [
                [t for sub in result.subsegments for t in sub["tokens"] if t < tokenizer.eot]
                for result in results
            ]
            alignments = self._model.find_alignment(
                tokenizer, text_tokens, encoder_output, [r.segment_size for r in results]
            )
            for result, alignment in zip(results, alignments, strict=True):
                result.alignment = alignment
        return results

    def _deliver_error(self, job: _Job, exc: BaseException) -> None:
        with job.cond:
            job.error = exc
            job.cond.notify_all()

    def _out_of_memory(self, size: int, exc: BaseException) -> None:
        with self._cond:
            # Half the batch that failed; min() keeps two streams failing at once from halving
            # twice for one shortage.
            self.batch_size = max(1, min(self.batch_size, size // 2))
            self._stats["out_of_memory"] += 1
        logger.warning(
            "out of memory with a batch of %d windows; batch size now %d (%s)",
            size,
            self.batch_size,
            exc,
        )

    def _count(self, name: str) -> None:
        with self._cond:
            self._stats[name] += 1

    def _count_prepared(self, prepared: PreparedAudio) -> None:
        with self._cond:
            self._files_by_vad[prepared.vad] += 1

    def _record_batch(self, items: list[_Item], seconds: float, *, detecting: bool) -> None:
        jobs = len({id(item.job) for item in items})
        with self._cond:
            self._stats["model_ms"] += int(seconds * 1000)
            if detecting:
                self._stats["detection_batches"] += 1
                self._stats["detections"] += len(items)
                return
            self._stats["batches"] += 1
            self._stats["windows"] += len(items)
            if jobs > 1:
                self._stats["multi_job_batches"] += 1
            self._batch_sizes[len(items)] += 1
            self._jobs_per_batch[jobs] += 1

    # ---- introspection and lifecycle -----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since load: batches, windows, multi-job batches, out-of-memory halvings,
        single windows tried again after an out-of-memory wait, isolation retries, failed and
        dropped windows, language-detection batches and detections, model time (both kinds),
        and the batch size now."""
        with self._cond:
            return {
                **{
                    name: self._stats[name]
                    for name in (
                        "batches",
                        "windows",
                        "multi_job_batches",
                        "out_of_memory",
                        "out_of_memory_waits",
                        "isolation_retries",
                        "failed_windows",
                        "dropped_windows",
                        "detection_batches",
                        "detections",
                        "model_ms",
                        "warm_ups",
                        "warm_up_failures",
                    )
                },
                "batch_size": self.batch_size,
                "initial_batch_size": self.initial_batch_size,
                "prepare_processes": self._preparation.processes if self._preparation else 0,
                "prepare_vad": self._preparation.vad_in_use if self._preparation else "onnx",
                "model_streams": self.model_streams,
                "max_batches_in_flight": self._max_in_flight,
                "preparation_pool_replacements": (
                    self._preparation.replacements if self._preparation else 0
                ),
                "solo_preparations": (
                    self._preparation.solo_preparations if self._preparation else 0
                ),
                "preparation_stuck_kills": (
                    self._preparation.stuck_kills if self._preparation else 0
                ),
                "long_files_prepared_in_thread": self._stats["long_files_prepared_in_thread"],
                "preparation_unavailable": self._stats["preparation_unavailable"],
                # Files by the VAD that split them (a worker set to the PyTorch VAD counting
                # onnx files has processes where it could not load).
                "prepared_files_by_vad": dict(self._files_by_vad),
                "queued_windows": len(self._queue),
                "batch_sizes": dict(self._batch_sizes),
                "jobs_per_batch": dict(self._jobs_per_batch),
            }

    def close(self) -> None:
        """Stop the scheduler thread (queued windows are abandoned; their jobs must be done)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        # The preparation pool is the process's, shared with its other engines: it stays.

    def _engine_info(self, options: TranscriptionOptions, duration_after_vad: float) -> dict:
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
            "batched": True,
            "batch_size": self.batch_size,
            "cross_job_batching": True,
            "beam_size": options.beam_size,
            "vad": options.vad,
            "word_timestamps": options.word_timestamps,
            "language_requested": options.language,
            "duration_after_vad": round(duration_after_vad, 3),
        }
