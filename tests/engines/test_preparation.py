"""Audio preparation in processes for cross-job batching (workers/preparation.py): the same
transcripts as preparation in the job threads, bad and crashing files failing only their job,
long files prepared in their thread, cancellation while a file is prepared."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engines.conftest import SENTENCES, wer
from tests.engines.preparation_targets import (
    die_on_marked_files,
    hang_on_marked_files,
    report_thread_limits,
)
from tests.engines.test_batching import ENGLISH, new_scheduler, run_jobs
from tests.support.processes import child_pids, spawned_children
from workers import preparation
from workers.engines.batching import BatchScheduler
from workers.engines.errors import AudioDecodeError, TranscriptionCancelled
from workers.preparation import (
    THREAD_VARIABLES,
    PreparationPool,
    prepare_audio,
    prepare_for_batching,
    window_features,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("batching")]


@pytest.fixture(scope="module")
def pooled(model_cache_dir) -> Iterator[BatchScheduler]:
    engine = new_scheduler(model_cache_dir, prepare_processes=2)
    yield engine
    engine.close()


def test_features_made_in_a_process_equal_those_made_in_the_thread(pooled, three_window_clip):
    extractor = pooled._model.feature_extractor
    inline = prepare_audio(three_window_clip, vad=True)
    remote = prepare_for_batching(
        str(three_window_clip), True, pooled._model.feat_kwargs, max_windows=10
    )

    assert len(inline.metadata) == len(remote.metadata) == 3
    assert remote.duration == inline.duration
    assert remote.clips == inline.clips
    for index in range(3):
        assert np.array_equal(
            remote.take_features(index, extractor), inline.take_features(index, extractor)
        )


def test_jobs_prepared_in_processes_are_transcribed_like_the_others(
    pooled, scheduler_in_threads, clips, three_window_clip
):
    jobs = [{"path": clip} for clip in clips] + [{"path": three_window_clip}]

    results = run_jobs(pooled, jobs)
    expected = run_jobs(scheduler_in_threads, jobs)

    for text, result in zip(SENTENCES, results, strict=False):
        assert wer(text, result.text) <= 0.25, result.text
    for result, reference in zip(results, expected, strict=True):
        assert wer(reference.text, result.text) <= 0.1, (reference.text, result.text)
        assert result.duration == reference.duration
        assert [w.start for s in result.segments for w in s.words]  # word timestamps came back
    stats = pooled.stats()
    assert stats["prepare_processes"] == 2
    assert stats["multi_job_batches"] >= 1
    # Split by the processes' PyTorch VAD (installed here), the others by the library's.
    assert stats["prepare_vad"] == "torch"
    assert stats["prepared_files_by_vad"].get("torch", 0) >= len(jobs)
    assert "onnx" not in stats["prepared_files_by_vad"]
    assert scheduler_in_threads.stats()["prepared_files_by_vad"].get("onnx", 0) >= len(jobs)


@pytest.fixture(scope="module")
def scheduler_in_threads(model_cache_dir) -> Iterator[BatchScheduler]:
    engine = new_scheduler(model_cache_dir)
    yield engine
    engine.close()


def test_an_undecodable_file_fails_only_its_job(pooled, clips, tmp_path):
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3" + b"\x00garbage" * 500)

    results = run_jobs(pooled, [{"path": broken}, {"path": clips[0]}])

    assert isinstance(results[0], AudioDecodeError)
    assert "Could not decode" in str(results[0])
    assert wer(SENTENCES[0], results[1].text) <= 0.25


def test_a_file_longer_than_the_limit_is_prepared_in_its_thread(model_cache_dir, three_window_clip):
    engine = new_scheduler(model_cache_dir)
    engine._preparation = PreparationPool(1, max_windows=2)  # the clip has three windows
    try:
        result = engine.transcribe(three_window_clip, ENGLISH)
    finally:
        engine.close()
        engine._preparation.close()

    assert engine.stats()["long_files_prepared_in_thread"] == 1
    assert len(result.text.split()) > 30
    assert result.duration > 60


def _copy(source: Path, folder: Path, name: str) -> Path:
    target = folder / name
    shutil.copy(source, target)
    return target


def test_a_dead_preparation_process_is_replaced_and_its_job_prepared_again(
    model_cache_dir, clips, tmp_path
):
    engine = new_scheduler(model_cache_dir)
    engine._preparation = PreparationPool(2, target=die_on_marked_files)
    once = _copy(clips[0], tmp_path, "first.die-once.wav")
    Path(f"{once}.marker").touch()
    always = _copy(clips[1], tmp_path, "second.die-always.wav")
    innocent = _copy(clips[2], tmp_path, "third.slow.wav")
    try:
        # Its first process dies; prepared again in a process of its own, it completes.
        survived = engine.transcribe(once, ENGLISH)
        replaced_once = engine.stats()["preparation_pool_replacements"]
        # Two slow files at once start both processes of the new pool (it spawns them lazily),
        # so that the next two files run side by side.
        warm = run_jobs(engine, [{"path": _copy(clips[3], tmp_path, f"warm-{i}.slow.wav")}
                                 for i in range(2)])  # fmt: skip
        # A file that kills every process fails alone; a job in the pool it broke completes.
        results = run_jobs(engine, [{"path": always}, {"path": innocent}])
        after = engine.transcribe(clips[3], ENGLISH)  # the replaced pool keeps working
        stats = engine.stats()
    finally:
        engine.close()
        engine._preparation.close()

    assert wer(SENTENCES[0], survived.text) <= 0.25
    assert replaced_once == 1
    assert all(wer(SENTENCES[3], result.text) <= 0.25 for result in warm)
    assert isinstance(results[0], AudioDecodeError)
    assert "preparation process died" in str(results[0])
    assert wer(SENTENCES[2], results[1].text) <= 0.25
    assert wer(SENTENCES[3], after.text) <= 0.25
    assert stats["preparation_pool_replacements"] == 2
    # The innocent file was being prepared when the pool broke (it takes two seconds, the
    # killer one): it was prepared again on its own too, as was the killer.
    assert stats["solo_preparations"] == 3


def test_a_cancel_while_a_file_is_prepared_stops_the_job(three_window_clip):
    pool = PreparationPool(1)
    asked = threading.Event()

    def cancel() -> bool:
        asked.set()
        return True

    try:
        with pytest.raises(TranscriptionCancelled):
            # The first call spawns the process (an import of faster-whisper): slow enough for
            # the wait to poll should_cancel at least once.
            pool.prepare(three_window_clip, True, {"feature_size": 80}, should_cancel=cancel)
    finally:
        pool.close()
    assert asked.is_set()


def test_preparation_processes_use_one_blas_thread(tmp_path):
    pool = PreparationPool(1, target=report_thread_limits)
    try:
        prepared = pool.prepare(tmp_path / "unused.wav", True, {})
    finally:
        pool.close()
    assert prepared.metadata == [
        {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ]


def test_window_features_match_the_model_extractor(pooled, three_window_clip):
    prepared = prepare_audio(three_window_clip, vad=True)
    features = window_features(pooled._model.feature_extractor, prepared.chunks[0])
    assert features.shape == (80, 3000)
    assert features.dtype == np.float32


def test_two_model_streams_run_batches_at_once_and_each_job_gets_its_own_text(
    model_cache_dir, clips, three_window_clip
):
    """Two scheduler threads on one model (CTranslate2 num_workers=2): batches overlap, and the
    transcripts are those of one stream."""
    engine = new_scheduler(model_cache_dir, batch_size=2, max_wait_ms=50, model_streams=2)
    try:
        results = run_jobs(engine, [{"path": clip} for clip in [*clips, three_window_clip]])
        stats = engine.stats()
    finally:
        engine.close()

    assert engine._model.model.num_workers == 2
    for text, result in zip(SENTENCES, results, strict=False):
        assert wer(text, result.text) <= 0.25, result.text
    assert len(results[-1].text.split()) > 30
    assert stats["model_streams"] == 2
    assert stats["max_batches_in_flight"] == 2
    assert stats["failed_windows"] == 0


def test_when_no_preparation_process_can_start_the_job_threads_prepare(model_cache_dir, clips):
    """A spawned process re-imports its parent's main module; a program read from stdin has none
    it can import, so no preparation process can start. The engine logs it and prepares audio in
    the job threads: every job is still transcribed."""
    import json
    import sys

    from tests.engines.conftest import REPO_ROOT

    program = f"""
import json, sys
from workers.engines.batching import BatchScheduler
from workers.engines.base import TranscriptionOptions
from workers.engines.models import prepare_model
engine = BatchScheduler(
    prepare_model("tiny.en", cache_dir={str(model_cache_dir)!r}), batch_size=2,
    prepare_processes=2,
)
result = engine.transcribe({str(clips[0])!r}, TranscriptionOptions(language="en"))
stats = engine.stats()
engine.close()
print(json.dumps({{"text": result.text, "stats": stats}}))
"""
    done = subprocess.run(
        [sys.executable, "-"],
        input=program,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert wer(SENTENCES[0], report["text"]) <= 0.25
    assert report["stats"]["preparation_unavailable"] == 1
    assert report["stats"]["prepare_processes"] == 0
    assert "audio preparation stays in the job threads" in done.stderr


def test_a_preparation_stuck_after_its_job_gave_up_is_killed_and_the_pool_goes_on(
    three_window_clip, tmp_path
):
    """A file whose decoding never ends must not hold a pool process for ever once its job has
    given up (cancel, time limit): its processes are killed and the pool replaced."""
    pool = PreparationPool(1, target=hang_on_marked_files, stuck_seconds=1.0)
    stuck = _copy(three_window_clip, tmp_path, "stuck.hang.wav")
    give_up = time.monotonic() + 3.0  # the first call also spawns the process
    others = set(child_pids(os.getpid(), "spawn_main"))  # other tests' pools
    try:
        with pytest.raises(TranscriptionCancelled):
            pool.prepare(stuck, True, {"feature_size": 80}, lambda: time.monotonic() > give_up)
        hung = set(child_pids(os.getpid(), "spawn_main")) - others
        deadline = time.monotonic() + 20
        while pool.stuck_kills == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        killed = pool.stuck_kills
        after = pool.prepare(three_window_clip, True, {"feature_size": 80})
        still_there = hung & set(child_pids(os.getpid(), "spawn_main"))
    finally:
        pool.close()

    assert len(hung) == 1
    assert killed == 1
    assert not still_there
    assert after.duration > 0
    assert pool.replacements == 1


def test_a_time_limit_raised_by_the_cancel_check_reaches_the_job(three_window_clip):
    """The job's cancel check raises its time limit (threads pools have no Celery limits): the
    exception reaches the job as itself, not as a cancel or a decode error."""

    class Deadline(Exception):
        pass

    def past_deadline() -> bool:
        raise Deadline("soft time limit")

    pool = PreparationPool(1)
    try:
        with pytest.raises(Deadline):
            pool.prepare(three_window_clip, True, {"feature_size": 80}, should_cancel=past_deadline)
    finally:
        pool.close()


def test_start_all_spawns_every_process_before_any_file_arrives():
    """Without it the pool has one process after ``check`` and spawns the rest as files come."""
    pool = PreparationPool(3)
    try:
        assert pool.start_all() == 0  # before check: nothing would watch the processes
        pool.check()
        before = spawned_children(os.getpid())
        assert pool.start_all() == 3
        assert spawned_children(os.getpid()) == before + 2
        assert pool.start_all() == 3  # again: nothing more to spawn
        assert spawned_children(os.getpid()) == before + 2
        assert pool.wait_ready() == 3  # each answers for itself
    finally:
        pool.close()


def test_start_all_holds_back_no_file_of_a_busy_pool(three_window_clip, tmp_path):
    """The worker's preload calls it while jobs arrive: it queues nothing and waits for nothing,
    so a file being prepared, and the next ones, go on as before."""
    slow = tmp_path / "clip.slow.wav"  # die_on_marked_files takes two seconds over it
    shutil.copyfile(three_window_clip, slow)
    pool = PreparationPool(2, target=die_on_marked_files)
    try:
        pool.check()
        results: list[Any] = []
        job = threading.Thread(
            target=lambda: results.append(pool.prepare(slow, True, {"feature_size": 80}))
        )
        job.start()
        started = time.monotonic()
        assert pool.start_all() == 2
        assert time.monotonic() - started < 1.0
        quick = pool.prepare(three_window_clip, True, {"feature_size": 80})
        job.join(timeout=60)
        assert len(quick.metadata) == 3
        assert len(results) == 1 and len(results[0].metadata) == 3
    finally:
        pool.close()


def test_a_scheduler_warms_its_whole_preparation_pool(model_cache_dir):
    engine = new_scheduler(model_cache_dir, prepare_processes=2)
    try:
        assert engine.warm() == 2
    finally:
        engine.close()
    plain = new_scheduler(model_cache_dir)  # no preparation pool: nothing to start
    try:
        assert plain.warm() == 0
    finally:
        plain.close()


@pytest.fixture
def start_here(monkeypatch):
    """Run a preparation process's initializer in this process, undoing what it sets: its thread
    limits, and the VAD it installs (stubbed: the real one would replace this process's)."""
    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, os.environ.get(name, "2"))
    monkeypatch.setattr(preparation, "_vad_engine", preparation._vad_engine)
    monkeypatch.setattr("workers.engines.silero.install", lambda engine, device: engine)
    return preparation._start_process


def test_a_preparation_process_runs_its_vad_once_when_it_starts(start_here, monkeypatch):
    seen: list[tuple[Any, bool]] = []
    monkeypatch.setattr(preparation, "split_speech", lambda audio, vad: seen.append((audio, vad)))

    start_here("torch", "cuda")

    assert preparation._vad_engine == "torch"
    [(audio, vad)] = seen
    assert vad is True
    assert audio.dtype == np.float32 and len(audio) == preparation.VAD_WARM_SECONDS * 16_000
    assert 0 < float(np.abs(audio).max()) < 0.1  # faint noise, the same every time
    assert np.array_equal(audio, preparation.warm_noise(preparation.VAD_WARM_SECONDS))


def test_a_failing_vad_warm_up_does_not_stop_a_preparation_process(start_here, monkeypatch, caplog):
    def fails(audio, vad):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(preparation, "split_speech", fails)

    start_here("onnx", "cpu")  # returns: a raising initializer would break the whole pool

    assert preparation._vad_engine == "onnx"
    assert "the VAD's warm-up failed" in caplog.text


def test_the_vad_warm_up_input_runs_through_the_real_vad():
    clips, chunks, metadata = preparation.split_speech(
        preparation.warm_noise(preparation.VAD_WARM_SECONDS), vad=True
    )

    assert clips == []  # faint noise: no speech, and nothing for the warm-up to decode
    assert len(chunks) == len(metadata) <= 1
