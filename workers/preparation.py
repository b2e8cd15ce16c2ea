"""Audio preparation for cross-job batching: decoding, Silero VAD and log-mel features.

Measured on an H200 node (16 cores; docs/benchmarks.md), the model alone decodes prepared windows
at 1600-2100x real time, but 100 job threads preparing their own audio reach only 650-750x: the
NumPy, PyAV and Python parts of preparation hold the GIL. The same work in 16 processes reached
2400-2600x, with one BLAS thread per process (with the default, one thread per core in each
process, 1034x). Silero VAD was ~75-82 % of that work; the processes run it in PyTorch
(``workers.engines.silero``: the VAD ~2.5x and a process ~1.8x faster than with faster-whisper's
ONNX Runtime session) where PyTorch is installed.

``PreparationPool`` runs ``prepare_for_batching`` in a pool of spawned processes: each returns a
file's duration, its VAD clips, its <= 30 s windows and every window's features, which the job
thread then feeds to the batch scheduler. A file longer than ``MAX_PREPARED_WINDOWS`` windows comes
back with its speech clips only: its job thread decodes it again and makes windows from those
clips (no second VAD pass) and features as its batches go, so that no job holds more than
~120 MB of features (about 1 MB per window). A preparation process that dies (a decoder crash,
the kernel's OOM killer) breaks the pool and every file in it: the pool is replaced and each of
those files prepared again in a process of its own (at most as many at once as the pool has
processes), so that only a file that kills that process too fails its job. One pool serves every
engine of a worker process (``shared_pool``).

This module imports NumPy and the engines only inside functions: a spawned process first imports
it, limits BLAS/OpenMP to one thread (before NumPy loads), loads its VAD, and only then does
any work.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30
# Audio the VAD runs on once when a preparation process starts (``_start_process``).
VAD_WARM_SECONDS = 2
# About 1 MB of float32 features per window: a job of more windows than this (an hour of speech)
# is prepared in its own thread as its windows are queued, which holds two batches at a time.
MAX_PREPARED_WINDOWS = 120
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
POLL_SECONDS = 0.2
# A preparation still running this long after its job gave up on it (cancel, time limit) is
# stuck (a decoder caught in a loop): its processes are killed, as if it had died, so it cannot
# hold a process of the pool for ever. A four-hour file prepares in under a minute.
STUCK_SECONDS = 300.0
# The VAD this process runs: faster-whisper's own ("onnx") unless this is a preparation process
# that loaded another (``_start_process``).
_vad_engine = "onnx"


@dataclass
class PreparedAudio:
    """A file's duration, VAD clips (samples) and windows: their metadata, and either their
    audio (``chunks``: features made on demand, in the job's thread) or their ``features``."""

    duration: float
    clips: list[dict[str, Any]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[Any] | None = None
    features: list[Any] | None = None
    vad: str = "none"  # the VAD that found the clips: "torch", "onnx", or "none" (no VAD)

    @property
    def speech_seconds(self) -> float:
        return sum(clip["end"] - clip["start"] for clip in self.clips) / SAMPLE_RATE

    def take_features(self, index: int, extractor: Any) -> Any:
        """Window ``index``'s features: the prepared array (released here, so memory falls as
        windows are queued) or made now from its audio."""
        if self.features is not None:
            features, self.features[index] = self.features[index], None
            return features
        assert self.chunks is not None
        return window_features(extractor, self.chunks[index])


def split_speech(audio: Any, vad: bool) -> tuple[list[dict], list[Any], list[dict]]:
    """Speech clips (samples), their <= 30 s windows and each window's metadata, as
    ``BatchedInferencePipeline.transcribe`` makes them; without VAD, plain 30 s windows."""
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    if vad:
        vad_options = VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=160)
        clips = get_speech_timestamps(audio, vad_options)
    else:
        step = CHUNK_SECONDS * SAMPLE_RATE
        clips = [
            {"start": start, "end": min(start + step, len(audio))}
            for start in range(0, len(audio), step)
        ]
    chunks, metadata = collect_chunks(audio, clips, max_duration=CHUNK_SECONDS)
    return clips, chunks, metadata


def window_features(extractor: Any, chunk: Any) -> Any:
    """The log-mel features of one window, padded to 30 s (what the batched pipeline feeds)."""
    from faster_whisper.audio import pad_or_trim

    return pad_or_trim(extractor(chunk)[..., :-1])


def prepare_audio(path: Any, vad: bool, clips: list[dict[str, Any]] | None = None) -> PreparedAudio:
    """Decode and split a file in the calling thread; features are made on demand. ``clips``
    (speech found earlier, by a preparation process) skips the VAD, the costly part."""
    from faster_whisper.vad import collect_chunks

    from workers.engines.audio import duration_of, load_audio

    audio = load_audio(path)
    prepared = PreparedAudio(duration=duration_of(audio), chunks=[])
    if prepared.duration > 0 and clips is not None:
        prepared.clips = clips
        prepared.chunks, prepared.metadata = collect_chunks(
            audio, clips, max_duration=CHUNK_SECONDS
        )
    elif prepared.duration > 0:
        prepared.clips, prepared.chunks, prepared.metadata = split_speech(audio, vad)
        prepared.vad = _vad_engine if vad else "none"
    return prepared


_extractors: dict[tuple, Any] = {}


def prepare_for_batching(
    path: str, vad: bool, feature_kwargs: dict[str, Any], max_windows: int
) -> PreparedAudio:
    """In a preparation process: decode, split and make every window's features; a file of more
    than ``max_windows`` windows comes back with its clips and windows' metadata only (its job
    thread decodes it again and makes features as it goes, without a second VAD pass)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    prepared = prepare_audio(path, vad)
    chunks, prepared.chunks = prepared.chunks or [], None
    if len(chunks) > max_windows:
        return prepared
    key = tuple(sorted(feature_kwargs.items()))
    extractor = _extractors.get(key)
    if extractor is None:
        extractor = _extractors[key] = FeatureExtractor(**feature_kwargs)
    prepared.features = [window_features(extractor, chunk) for chunk in chunks]
    return prepared


def warm_noise(seconds: float) -> Any:
    """``seconds`` of faint, reproducible noise at the models' sample rate: input for warm-ups
    (the VAD here, ``BatchScheduler.warm_model``), which need audio but no speech."""
    import numpy as np

    samples = int(seconds * SAMPLE_RATE)
    return (np.random.default_rng(0).standard_normal(samples) * 0.01).astype(np.float32)


def _ping() -> tuple[int, str]:
    """What ``PreparationPool.check`` runs: a process that answers can import this module; it
    says which VAD it runs."""
    return os.getpid(), _vad_engine


def _rendezvous(folder: str, count: int, timeout: float) -> int:
    """What ``PreparationPool.wait_ready`` runs: check in under ``folder``, then wait until
    ``count`` processes have (or ``timeout`` passes), so that no process answers for another
    and every one of them has started; returns this process's pid."""
    pid = os.getpid()
    try:
        (Path(folder) / str(pid)).touch()
    except FileNotFoundError:  # the caller stopped waiting and removed the folder
        return pid
    deadline = time.monotonic() + timeout
    try:
        while len(os.listdir(folder)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    except FileNotFoundError:
        pass
    return pid


def _start_process(vad_engine: str = "onnx", vad_device: str = "cpu") -> None:
    """Pool initializer: one BLAS/OpenMP thread per process (the pool is the parallelism; a
    spawned process runs this before it imports NumPy, as only this module is imported first),
    then the VAD (``workers.engines.silero.install``: PyTorch's, ~2.5x faster on a core, or ONNX
    Runtime's). It never raises (a failing initializer would break the pool): a VAD that cannot
    load falls back to ONNX Runtime's, which ``check`` reports."""
    global _vad_engine
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    try:
        from workers.engines.silero import install

        _vad_engine = install(vad_engine, vad_device)
    except Exception:
        logger.exception("preparation process: the %s VAD could not load", vad_engine)
        _vad_engine = "onnx"
    try:
        # The VAD's first run loads its kernels (on CUDA, a context's worth): paid here, before
        # a job's file waits for it.
        split_speech(warm_noise(VAD_WARM_SECONDS), vad=True)
    except Exception:
        logger.exception("preparation process: the VAD's warm-up failed")


class PreparationPool:
    """Spawned processes preparing audio for ``BatchScheduler``s; replaced when one dies."""

    def __init__(
        self,
        processes: int,
        *,
        max_windows: int = MAX_PREPARED_WINDOWS,
        target: Callable[..., PreparedAudio] = prepare_for_batching,
        vad_engine: str = "auto",
        vad_device: str = "cpu",
        stuck_seconds: float = STUCK_SECONDS,
    ) -> None:
        from workers.engines.silero import VAD_ENGINES

        if vad_engine not in VAD_ENGINES:
            raise ValueError(
                f"Unknown VAD engine {vad_engine!r}; choose one of {', '.join(VAD_ENGINES)}."
            )
        self.processes = max(1, int(processes))
        self.vad_engine = vad_engine
        self.vad_device = vad_device
        self.vad_in_use = "unknown"  # what the processes run, known once ``check`` has run
        self.max_windows = max_windows
        # What the processes run: a module-level function (spawned processes import it by name).
        self._target = target
        self._lock = threading.Lock()
        self._executor = self._new_executor()
        self._closed = False
        # A dead process fails every file in its pool at once: their solo retries start at most
        # this many processes at a time, not one per job thread.
        self._solo_slots = threading.BoundedSemaphore(self.processes)
        self.stuck_seconds = stuck_seconds
        self.replacements = 0
        self.solo_preparations = 0
        self.stuck_kills = 0

    def _new_executor(self, processes: int | None = None) -> ProcessPoolExecutor:
        # No max_tasks_per_child: on Python 3.11-3.13 (before gh-115634's fix) a pool with a
        # backlog stops spawning replacements and hangs. A process that leaks until the kernel
        # kills it breaks the pool, which is then replaced like any dead process's.
        return ProcessPoolExecutor(
            max_workers=processes or self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_process,
            initargs=(self.vad_engine, self.vad_device),
        )

    def prepare(
        self,
        path: Any,
        vad: bool,
        feature_kwargs: dict[str, Any],
        should_cancel: Any = None,
    ) -> PreparedAudio:
        """Prepare ``path`` in a pool process (waiting in steps so that a cancel or a time limit
        is seen). A dead process breaks the pool and fails every file in it, with no sign of
        which one killed it: the pool is replaced and each of those files prepared once more in
        a process of its own, where a second death is its own file's doing."""
        args = (os.fspath(path), vad, feature_kwargs, self.max_windows)
        executor = self._executor
        try:
            try:
                future = executor.submit(self._target, *args)
            except RuntimeError:
                # Broken (BrokenProcessPool is a RuntimeError) or shut down by another job's
                # thread replacing it a moment ago: try the pool in place now, once.
                if self._closed:
                    raise RuntimeError("The preparation pool is closed.") from None
                if executor is self._executor:
                    self._replace(executor)
                executor = self._executor
                future = executor.submit(self._target, *args)
            return self._wait(future, should_cancel, executor, shared=True)
        except BrokenProcessPool:
            self._replace(executor)
        logger.warning("a preparation process died; preparing %s again on its own", args[0])
        with self._solo_slots:
            with self._lock:
                self.solo_preparations += 1
            solo = self._new_executor(processes=1)
            try:
                return self._wait(solo.submit(self._target, *args), should_cancel, solo)
            except BrokenProcessPool:
                from workers.engines.errors import AudioDecodeError

                raise AudioDecodeError(
                    "Could not decode the audio file: its preparation process died."
                ) from None
            finally:
                solo.shutdown(wait=False, cancel_futures=True)

    def check(self, timeout: float = 120.0) -> None:
        """Start one process and wait for it to answer; raise ``RuntimeError`` if it cannot (a
        main module that a spawned process cannot import, say), so the caller can prepare in
        threads instead of failing every job."""
        try:
            _pid, self.vad_in_use = self._executor.submit(_ping).result(timeout=timeout)
        except (BrokenProcessPool, FutureTimeout, OSError) as exc:
            self.close(wait=False)
            raise RuntimeError(f"preparation processes could not start: {exc!r}") from exc
        if self.vad_engine not in ("auto", self.vad_in_use):
            logger.error(
                "preparation processes run the %s VAD: the %s VAD on %s could not load",
                self.vad_in_use,
                self.vad_engine,
                self.vad_device,
            )

    def start_all(self) -> int:
        """Spawn every process the pool may have now, rather than as files arrive; returns how
        many it has. ``ProcessPoolExecutor`` spawns a process for a submission only while none
        is idle, so without this the first burst of jobs waits for up to ``processes`` starts
        (imports, a CUDA context for the VAD). Nothing waits here and no task is queued: the
        processes start (and load their VAD) beside any job already running, and take files as
        soon as they are ready. Safe to call again (it spawns only what is missing) and on a
        pool in use; does nothing before ``check``.

        Uses ``ProcessPoolExecutor._spawn_process`` (CPython 3.9 and later, what the executor
        itself calls); where it is missing the pool keeps spawning on demand."""
        with self._lock:
            if self._closed:
                return 0
            executor = self._executor
            spawn = getattr(executor, "_spawn_process", None)
            processes = getattr(executor, "_processes", None)
            if spawn is None or processes is None:
                logger.warning("this Python's ProcessPoolExecutor cannot start processes ahead")
                return len(processes or {})
            if getattr(executor, "_executor_manager_thread", None) is None:
                # Not checked yet: processes spawned before the executor's manager thread runs
                # would not be watched, nor stopped at shutdown. ``check`` starts it.
                return len(processes)
            try:
                while len(processes) < self.processes:
                    spawn()
            except (RuntimeError, OSError):
                # A broken or shut-down executor: the next file replaces it as usual.
                logger.warning("could not start every preparation process", exc_info=True)
            return len(processes)

    def wait_ready(self, timeout: float = 120.0) -> int:
        """For benchmarks, on an idle pool: wait until every process has started and loaded its
        VAD; returns how many answered. Each of ``processes`` tasks holds its process until all
        have checked in (``_rendezvous``), so no process answers for another. Not for a pool
        that is preparing jobs' files: theirs would wait behind it."""
        self.start_all()
        executor = self._executor
        with tempfile.TemporaryDirectory(
            prefix="lexiscore-prepare-start-", ignore_cleanup_errors=True
        ) as folder:
            futures = [
                executor.submit(_rendezvous, folder, self.processes, timeout)
                for _ in range(self.processes)
            ]
            done, pending = wait(futures, timeout=timeout + 5)
            for future in pending:
                future.cancel()
            return len({f.result() for f in done if not f.cancelled() and f.exception() is None})

    def _wait(
        self,
        future: Future,
        should_cancel: Any,
        executor: ProcessPoolExecutor,
        *,
        shared: bool = False,
    ) -> PreparedAudio:
        """The future's result, polling ``should_cancel``; a future left behind in a pool that
        was replaced meanwhile (a rare race inside ``ProcessPoolExecutor`` can leave it pending
        for ever) counts as broken once it has waited a second without starting. A future
        given up while it runs is watched (``_reap_if_stuck``)."""
        stranded = 0
        while True:
            done, _pending = wait([future], timeout=POLL_SECONDS)
            if done:
                try:
                    return future.result()
                except CancelledError:  # cancelled by the shutdown of a broken pool
                    raise BrokenProcessPool("preparation cancelled by a pool shutdown") from None
            try:
                if should_cancel is not None and should_cancel():
                    from workers.engines.errors import TranscriptionCancelled

                    raise TranscriptionCancelled()
            except BaseException:
                # Cancelled, or a time limit raised by the check: the file is not prepared for
                # nothing if it has not started (one already running finishes, unread, unless
                # it is stuck).
                if not future.cancel():
                    self._reap_if_stuck(future, executor)
                raise
            if shared and executor is not self._executor and not future.running():
                stranded += 1
                if stranded * POLL_SECONDS >= 1.0:
                    future.cancel()
                    raise BrokenProcessPool("left behind in a replaced pool")

    def _reap_if_stuck(self, future: Future, executor: ProcessPoolExecutor) -> None:
        """Its job gave up on ``future`` while it ran: if it still runs ``stuck_seconds`` later,
        kill the processes of its executor. Which process runs it is not known; killing them
        all breaks the pool as a dying process would, and the files prepared there meanwhile are
        prepared again on their own (``prepare``), so only the stuck file is lost, and its job
        had already ended."""

        # Taken now: shutting an executor down (a solo one, at once) forgets its processes.
        processes = list((getattr(executor, "_processes", None) or {}).values())

        def watch() -> None:
            done, _pending = wait([future], timeout=self.stuck_seconds)
            if done:
                return
            logger.error(
                "a preparation still runs %.0f s after its job gave up on it: killing %d "
                "preparation process(es)",
                self.stuck_seconds,
                len(processes),
            )
            with self._lock:
                self.stuck_kills += 1
            for process in processes:
                with contextlib.suppress(OSError, ValueError):  # already gone
                    process.kill()

        threading.Thread(target=watch, name="preparation-reaper", daemon=True).start()

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._closed:
                return
            if self._executor is broken:  # not already replaced by another job's thread
                self._executor = self._new_executor()
                self.replacements += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)


_shared: dict[tuple[int, str, str], PreparationPool] = {}
_shared_lock = threading.Lock()


def shared_pool(
    processes: int, vad_engine: str = "auto", vad_device: str = "cpu"
) -> tuple[PreparationPool, bool]:
    """The process's preparation pool of this size and VAD (one for every engine of the process,
    so a worker serving tiny.en and base runs ``processes`` processes, not twice as many),
    started and checked on first use; and whether it was made by this call."""
    key = (processes, vad_engine, vad_device)
    with _shared_lock:
        pool = _shared.get(key)
        if pool is not None and not pool._closed:
            return pool, False
        pool = PreparationPool(processes, vad_engine=vad_engine, vad_device=vad_device)
        pool.check()  # raises RuntimeError: nothing is kept
        _shared[key] = pool
        return pool, True
