"""Whisper engines behind one small interface, and a per-process engine cache.

Importing this package is cheap: the engines (faster-whisper, PyTorch) are imported only when
``get_engine`` first loads one, so the web process can use ``workers.engines.models`` for
readiness checks without paying for them.

Usage from a worker::

    engine = get_engine("faster-whisper", profile, "cpu", cache_dir=settings_value)
    result = engine.transcribe(path, TranscriptionOptions(language="fr"), progress, cancelled)
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from workers.engines.base import (
    Engine,
    Segment,
    TranscriptionOptions,
    TranscriptionResult,
    Word,
)
from workers.engines.errors import (
    AudioDecodeError,
    EngineError,
    ModelError,
    ModelFormatError,
    ModelIntegrityError,
    ModelNotFoundError,
    ProfileError,
    TranscriptionCancelled,
    UnsupportedLanguageError,
)
from workers.engines.models import choose_profile, locate_model, prepare_model

__all__ = [
    "ENGINE_NAMES",
    "AudioDecodeError",
    "Engine",
    "EngineError",
    "ModelError",
    "ModelFormatError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ProfileError",
    "Segment",
    "TranscriptionCancelled",
    "TranscriptionOptions",
    "TranscriptionResult",
    "UnsupportedLanguageError",
    "Word",
    "choose_profile",
    "clear_engine_cache",
    "get_engine",
    "loaded_engines",
    "locate_model",
    "prepare_model",
]

FASTER_WHISPER = "faster-whisper"
OPENAI_WHISPER = "openai-whisper"
ENGINE_NAMES = (FASTER_WHISPER, OPENAI_WHISPER)

# A worker that serves both an English-only and a multilingual profile keeps both loaded
# (about 0.5 GB each with faster-whisper on CPU) instead of reloading on every switch.
DEFAULT_MAX_ENGINES = 2

_engines: OrderedDict[tuple[Any, ...], Engine] = OrderedDict()
# Guards _engines and _loading; never held while a model loads.
_lock = threading.Lock()
# One load lock per configuration this process has asked for.
_loading: dict[tuple[Any, ...], threading.Lock] = {}


def get_engine(
    name: str = FASTER_WHISPER,
    profile: str = "base",
    device: str = "cpu",
    *,
    cache_dir: Path | str,
    model_dir: Path | str | None = None,
    expected_sha256: str | None = None,
    compute_type: str | None = None,
    cpu_threads: int = 2,
    num_workers: int = 1,
    batch_size: int | None = None,
    cross_job_batching: bool = False,
    max_wait_ms: float = 10.0,
    prepare_processes: int = 0,
    model_streams: int = 1,
    vad_engine: str = "auto",
    vad_device: str = "cpu",
    max_engines: int = DEFAULT_MAX_ENGINES,
) -> Engine:
    """Return a loaded engine, loading it on first use in this process.

    Engines are cached per process by their full configuration (least recently used first out
    beyond ``max_engines``). Concurrent callers of one configuration share its one load; a load
    holds up no caller of another configuration (a job for a loaded ``tiny.en`` goes on while
    ``base`` loads).
    ``model_dir``/``expected_sha256`` override a profile's files (see ``models.locate_model``);
    ``compute_type``, ``num_workers`` and ``batch_size`` apply to faster-whisper only.

    With ``cross_job_batching`` (faster-whisper only) the engine is a ``BatchScheduler``: one
    model fed by every job thread of the process, windows of many jobs decoded in one batch of
    up to ``batch_size`` (None: chosen from free GPU memory on CUDA, 8 on CPU), waiting at most
    ``max_wait_ms`` for a batch to fill. Its scheduler thread lives as long as the process. With
    ``prepare_processes`` > 0 it decodes, VAD-splits and makes features in that many spawned
    processes (``workers.preparation``) instead of in the job threads; with ``model_streams`` > 1
    that many scheduler threads run batches at once on one model (CTranslate2 ``num_workers``);
    ``vad_engine``/``vad_device`` choose the preparation processes' VAD
    (``workers.engines.silero``).
    """
    if name not in ENGINE_NAMES:
        raise ValueError(f"Unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}.")
    key = (
        name,
        profile,
        device,
        os.fspath(cache_dir),
        None if model_dir is None else os.fspath(model_dir),
        expected_sha256,
        compute_type,
        cpu_threads,
        num_workers,
        batch_size,
        cross_job_batching and name == FASTER_WHISPER,
        max_wait_ms,
        prepare_processes,
        model_streams,
        vad_engine,
        vad_device,
    )
    engine = _cached(key)
    if engine is not None:
        return engine
    # One lock per configuration: callers of one configuration share its single load, and a
    # load (seconds for `base` on a GPU) holds up no caller of another configuration. The locks
    # stay (a process sees a handful of configurations), so no caller can miss one being held.
    with _lock:
        loading = _loading.setdefault(key, threading.Lock())
    with loading:
        engine = _cached(key)
        if engine is not None:
            return engine
        engine = _load(
            name,
            profile,
            device,
            cache_dir=cache_dir,
            model_dir=model_dir,
            expected_sha256=expected_sha256,
            faster={
                "device": device,
                "compute_type": compute_type,
                "cpu_threads": cpu_threads,
                "num_workers": num_workers,
                "batch_size": batch_size,
            },
            batching=(
                {
                    "max_wait_ms": max_wait_ms,
                    "prepare_processes": prepare_processes,
                    "model_streams": model_streams,
                    "vad_engine": vad_engine,
                    "vad_device": vad_device,
                }
                if cross_job_batching
                else None
            ),
            cpu_threads=cpu_threads,
        )
        with _lock:
            _engines[key] = engine
            while len(_engines) > max(max_engines, 1):
                _engines.popitem(last=False)
        return engine


def _cached(key: tuple[Any, ...]) -> Engine | None:
    with _lock:
        engine = _engines.get(key)
        if engine is not None:
            _engines.move_to_end(key)
        return engine


def _load(
    name: str,
    profile: str,
    device: str,
    *,
    cache_dir: Path | str,
    model_dir: Path | str | None,
    expected_sha256: str | None,
    faster: dict[str, Any],
    batching: dict[str, Any] | None,
    cpu_threads: int,
) -> Engine:
    files = prepare_model(
        profile, cache_dir=cache_dir, model_dir=model_dir, expected_sha256=expected_sha256
    )
    if name == FASTER_WHISPER:
        from workers.engines.batching import BatchScheduler
        from workers.engines.faster import FasterWhisperEngine

        if batching is not None:
            return BatchScheduler(files, **batching, **faster)
        return FasterWhisperEngine(files, **faster)
    from workers.engines.openai import OpenAIWhisperEngine

    return OpenAIWhisperEngine(files, cache_dir=cache_dir, device=device, cpu_threads=cpu_threads)


def loaded_engines() -> list[Engine]:
    """The engines this process holds, least recently used first."""
    with _lock:
        return list(_engines.values())


def clear_engine_cache() -> None:
    """Drop every cached engine (their memory is freed once no caller holds them)."""
    with _lock:
        _engines.clear()
