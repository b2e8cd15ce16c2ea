"""Cross-job batching (workers.engines.batching) on CPU: the same code path as on a GPU, small
batches, tiny.en and short espeak clips. Jobs run in threads, as in a `--pool threads` worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engines.conftest import ENGLISH_TEXT, FOREIGN_SPEECH, SENTENCES, model_files, wer
from tests.engines.test_faster import _assert_timestamps_sane
from workers.engines import get_engine
from workers.engines.audio import load_audio
from workers.engines.base import TranscriptionOptions
from workers.engines.batching import BatchScheduler, choose_batch_size, is_out_of_memory
from workers.engines.errors import (
    AudioDecodeError,
    ProfileError,
    TranscriptionCancelled,
    UnsupportedLanguageError,
)
from workers.preparation import split_speech, window_features

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("batching")]

ENGLISH = TranscriptionOptions(language="en")
# The batched engine must stay this close to the unbatched one on the same clip.
MAX_WER_VS_UNBATCHED = 0.1
OOM = "CUDA failed with error out of memory"


def new_scheduler(model_cache_dir: Path, **kwargs: Any) -> BatchScheduler:
    files = model_files("tiny.en", model_cache_dir)
    return BatchScheduler(files, **{"batch_size": 4, "max_wait_ms": 400, **kwargs})


@pytest.fixture(scope="module")
def scheduler(model_cache_dir) -> Iterator[BatchScheduler]:
    engine = new_scheduler(model_cache_dir)
    yield engine
    engine.close()


def run_jobs(engine, jobs: list[dict[str, Any]]) -> list[Any]:
    """Run each job's `transcribe` in its own thread at once; results or raised exceptions."""
    results: list[Any] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(index: int, job: dict[str, Any]) -> None:
        start.wait()
        try:
            results[index] = engine.transcribe(
                job["path"],
                job.get("options", ENGLISH),
                progress_callback=job.get("progress"),
                should_cancel=job.get("cancel"),
            )
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_concurrent_jobs_share_batches_and_match_the_unbatched_engine(
    scheduler, tiny_engine, clips
):
    before = scheduler.stats()
    progress: list[list[tuple[float, float]]] = [[] for _ in clips]
    jobs = [
        {"path": clip, "progress": lambda done, total, i=i: progress[i].append((done, total))}
        for i, clip in enumerate(clips)
    ]

    results = run_jobs(scheduler, jobs)

    after = scheduler.stats()
    assert after["multi_job_batches"] > before["multi_job_batches"]
    assert max(after["jobs_per_batch"]) >= 2
    for clip, text, result, reported in zip(clips, SENTENCES, results, progress, strict=True):
        unbatched = tiny_engine.transcribe(clip, ENGLISH)
        assert wer(unbatched.text, result.text) <= MAX_WER_VS_UNBATCHED, result.text
        assert wer(text, result.text) <= 0.25, result.text
        assert result.engine_info["cross_job_batching"] is True
        assert result.engine_info["engine"] == "faster-whisper"
        assert result.engine_info["batched"] is True
        assert reported[-1][0] == reported[-1][1] == pytest.approx(result.duration, abs=0.001)
        assert [done for done, _ in reported] == sorted(done for done, _ in reported)


def test_word_timestamps_are_present_and_monotonic(scheduler, three_window_clip):
    result = scheduler.transcribe(three_window_clip, ENGLISH)

    _assert_timestamps_sane(result)
    assert len(result.words) >= 150
    assert result.duration > 60
    assert result.segments[-1].end > result.duration - 3.0
    assert wer(" ".join([ENGLISH_TEXT] * 8), result.text) <= 0.15


def test_word_timestamps_can_be_turned_off(scheduler, clips):
    result = scheduler.transcribe(
        clips[0], TranscriptionOptions(language="en", word_timestamps=False)
    )

    assert result.words == []
    assert wer(SENTENCES[0], result.text) <= 0.25


def test_a_cancelled_job_stops_and_the_others_complete(scheduler, clips, three_window_clip):
    cancel = threading.Event()
    jobs = [
        {
            "path": three_window_clip,
            "progress": lambda done, total: cancel.set(),
            "cancel": cancel.is_set,
        },
        *({"path": clip} for clip in clips[:2]),
    ]

    results = run_jobs(scheduler, jobs)

    assert isinstance(results[0], TranscriptionCancelled)
    for text, result in zip(SENTENCES[:2], results[1:], strict=True):
        assert wer(text, result.text) <= 0.25
    assert scheduler.stats()["queued_windows"] == 0


def test_an_exception_from_should_cancel_reaches_the_job(scheduler, three_window_clip):
    # The worker's time limit is raised this way (processing.JobTimeLimitExceeded).
    calls = 0

    def deadline() -> bool:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise TimeoutError("deadline passed")
        return False

    results = run_jobs(scheduler, [{"path": three_window_clip, "cancel": deadline}])

    assert isinstance(results[0], TimeoutError)
    assert scheduler.stats()["queued_windows"] == 0


def test_an_undecodable_file_fails_only_its_job(scheduler, clips, tmp_path):
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3" + b"\x00garbage" * 500)

    results = run_jobs(scheduler, [{"path": broken}, {"path": clips[0]}, {"path": clips[1]}])

    assert isinstance(results[0], AudioDecodeError)
    assert wer(SENTENCES[0], results[1].text) <= 0.25
    assert wer(SENTENCES[1], results[2].text) <= 0.25


def run_with_failures(engine, jobs, fail) -> tuple[list[Any], dict[str, Any]]:
    """Run `jobs` on `engine` (closed after) with its model raising `fail(features)` on the
    batches for which that returns an exception; the jobs' results and the engine's stats."""
    real = engine._pipeline.generate_segment_batched

    def generate(features, tokenizer, options):
        error = fail(features)
        if error is not None:
            raise error
        return real(features, tokenizer, options)

    engine._pipeline.generate_segment_batched = generate
    try:
        return run_jobs(engine, jobs), engine.stats()
    finally:
        engine.close()


def first_window_of(engine, clip):
    _clips, chunks, _meta = split_speech(load_audio(clip), True)
    return window_features(engine._model.feature_extractor, chunks[0])


def holds(window):
    return lambda features: any(np.array_equal(row, window) for row in features)


def test_out_of_memory_halves_the_batch_and_every_job_completes(model_cache_dir, clips):
    failed: list[int] = []

    def first_batch_of_several(features):
        if not failed and features.shape[0] > 1:
            failed.append(features.shape[0])
            return RuntimeError(OOM)
        return None

    results, stats = run_with_failures(
        new_scheduler(model_cache_dir), [{"path": clip} for clip in clips], first_batch_of_several
    )

    assert failed and failed[0] >= 2
    assert stats["out_of_memory"] == 1
    assert stats["batch_size"] == max(1, failed[0] // 2)
    for text, result in zip(SENTENCES, results, strict=True):
        assert wer(text, result.text) <= 0.25


def test_a_single_window_out_of_memory_waits_and_its_job_completes(
    model_cache_dir, clips, monkeypatch
):
    """A window that does not fit even alone (other streams hold the memory) is tried again
    after a wait, not failed: the shortage passes when their batches end."""
    monkeypatch.setattr("workers.engines.batching.OUT_OF_MEMORY_WAITS", (0.01, 0.01, 0.01))
    shortages = [2]  # the first two single-window calls run out of memory

    def short_twice(features):
        if shortages[0]:
            shortages[0] -= 1
            return RuntimeError(OOM)
        return None

    [result], stats = run_with_failures(
        new_scheduler(model_cache_dir, batch_size=1), [{"path": clips[0]}], short_twice
    )

    assert wer(SENTENCES[0], result.text) <= 0.25
    assert stats["out_of_memory_waits"] == 2
    assert stats["failed_windows"] == 0


def test_a_window_that_never_fits_fails_only_its_job_after_the_waits(
    model_cache_dir, clips, monkeypatch
):
    monkeypatch.setattr("workers.engines.batching.OUT_OF_MEMORY_WAITS", (0.01, 0.01))
    engine = new_scheduler(model_cache_dir)
    huge = holds(first_window_of(engine, clips[2]))

    results, stats = run_with_failures(
        engine,
        [{"path": clip} for clip in clips],
        lambda features: RuntimeError(OOM) if huge(features) else None,
    )

    assert is_out_of_memory(results[2])
    for index in (0, 1, 3):
        assert wer(SENTENCES[index], results[index].text) <= 0.25
    assert stats["out_of_memory_waits"] == 2
    assert stats["failed_windows"] == 1


def test_an_error_in_one_window_fails_only_its_job(model_cache_dir, clips):
    engine = new_scheduler(model_cache_dir)
    poison = holds(first_window_of(engine, clips[2]))

    results, stats = run_with_failures(
        engine,
        [{"path": clip} for clip in clips],
        lambda features: ValueError("this window breaks the model") if poison(features) else None,
    )

    assert isinstance(results[2], ValueError)
    for index in (0, 1, 3):
        assert wer(SENTENCES[index], results[index].text) <= 0.25
    assert stats["failed_windows"] == 1
    assert stats["out_of_memory"] == 0


def test_warming_the_model_runs_each_stream_and_leaves_jobs_untouched(model_cache_dir, clips):
    engine = new_scheduler(model_cache_dir, batch_size=2, model_streams=2)
    calls: list[tuple[str, list[int]]] = []
    decode = engine._decode_batch

    def recorded(items, setup=None):
        outputs = decode(items, setup)
        calls.append(
            (
                threading.current_thread().name,
                [sum(len(sub["tokens"]) for sub in output.subsegments) for output in outputs],
            )
        )
        return outputs

    engine._decode_batch = recorded
    try:
        assert engine.warm_model(max_new_tokens=20) is True
        engine._decode_batch = decode
        stats = engine.stats()
        result = engine.transcribe(clips[0], ENGLISH)
        [(tokenizer, options)] = engine._setups.values()  # the jobs' own, shared with the warm-up
    finally:
        engine.close()

    assert sorted(name for name, _ in calls) == ["whisper-warm-0", "whisper-warm-1"]
    # Forced past the end of text: every window of both batches decoded the same length,
    # CTranslate2's half of (prompt + 20 new tokens).
    lengths = {length for _, window_lengths in calls for length in window_lengths}
    assert len(lengths) == 1 and 8 <= lengths.pop() <= 11
    assert all(len(window_lengths) == 2 for _, window_lengths in calls)
    assert stats["warm_ups"] == 1 and stats["warm_up_failures"] == 0
    assert stats["batches"] == 0 and stats["windows"] == 0  # nothing delivered or counted
    # The warm-up forced a copy: the options jobs decode with are untouched.
    assert tokenizer.eot not in options.suppress_tokens and options.max_new_tokens is None
    assert wer(SENTENCES[0], result.text) <= 0.25


def test_warm_runs_the_model_warm_up_on_cuda_or_when_asked(model_cache_dir, monkeypatch):
    engine = new_scheduler(model_cache_dir)
    warmed: list[int] = []
    monkeypatch.setattr(engine, "warm_model", lambda: warmed.append(1) or True)
    try:
        assert engine.warm() == 0  # on the CPU: no model warm-up unless asked
        assert warmed == []
        assert engine.warm(model=True) == 0
        assert warmed == [1]
        engine.device = "cuda"  # what a GPU worker's preload calls
        engine.warm()
        assert warmed == [1, 1]
    finally:
        engine.close()


def test_a_failing_model_warm_up_is_logged_and_counted_not_raised(
    model_cache_dir, clips, caplog, monkeypatch
):
    engine = new_scheduler(model_cache_dir, model_streams=2)

    def fails(items, setup=None):
        raise RuntimeError("CUDA failed with error out of memory")

    decode, engine._decode_batch = engine._decode_batch, fails
    try:
        assert engine.warm_model(max_new_tokens=4) is False
        engine._decode_batch = decode
        # A setup that raises (here: the features) is a failure too, not an exception.
        with monkeypatch.context() as patch:
            patch.setattr("workers.engines.batching.window_features", fails)
            assert engine.warm_model(max_new_tokens=4) is False
        result = engine.transcribe(clips[0], ENGLISH)
        stats = engine.stats()
    finally:
        engine.close()

    assert "warming the model failed (2 of 2 streams)" in caplog.text
    assert stats["warm_up_failures"] == 2 and stats["warm_ups"] == 0
    assert stats["out_of_memory"] == 0  # the warm-up leaves the batch size alone
    assert wer(SENTENCES[0], result.text) <= 0.25


def test_a_hung_model_warm_up_is_given_up_on(model_cache_dir, monkeypatch, caplog):
    engine = new_scheduler(model_cache_dir)
    release = threading.Event()
    monkeypatch.setattr("workers.engines.batching.WARM_TIMEOUT_SECONDS", 0.5)
    engine._decode_batch = lambda items, setup=None: release.wait(30)
    try:
        assert engine.warm_model() is False
    finally:
        release.set()
        engine.close()

    assert "warming the model failed" in caplog.text and "still running after" in caplog.text
    assert engine.stats()["warm_up_failures"] == 1


def test_warming_a_multilingual_model_detects_languages_first(model_cache_dir):
    files = model_files("base", model_cache_dir)
    engine = BatchScheduler(files, batch_size=2)
    detected: list[list[tuple[str, float]]] = []
    detect = engine._detect_batch
    engine._detect_batch = lambda items: detected.append(detect(items)) or detected[-1]
    try:
        assert engine.warm_model(max_new_tokens=8) is True
    finally:
        engine.close()

    [languages] = detected
    assert len(languages) == 2 and all(0 <= p <= 1 for _, p in languages)


def test_english_only_model_refuses_unknown_language(scheduler, clips):
    with pytest.raises(ProfileError):
        scheduler.transcribe(clips[0], TranscriptionOptions(language=None))


def test_a_language_missing_from_the_vocabulary_is_refused(model_cache_dir, english_clip):
    engine = BatchScheduler(model_files("base", model_cache_dir), batch_size=4, max_wait_ms=400)
    try:
        with pytest.raises(UnsupportedLanguageError, match="'yue'"):
            engine.transcribe(english_clip, TranscriptionOptions(language="yue"))
        stats = engine.stats()
    finally:
        engine.close()

    assert (stats["windows"], stats["detections"]) == (0, 0)


def test_unknown_languages_are_detected_in_batches_across_jobs(
    model_cache_dir, base_engine, speech, english_clip
):
    """Four jobs of unknown language at once on the multilingual model: their first windows are
    detected in shared batches, each with the language and probability the unbatched engine's
    detection gives, and each job is then decoded in its own language."""
    clips = {"en": english_clip} | {
        language: speech.say(text, voice=language, speed=speed)
        for language, (text, speed) in FOREIGN_SPEECH.items()
    }
    engine = BatchScheduler(model_files("base", model_cache_dir), batch_size=4, max_wait_ms=400)
    try:
        results = run_jobs(
            engine,
            [{"path": clip, "options": TranscriptionOptions()} for clip in clips.values()],
        )
        stats = engine.stats()
    finally:
        engine.close()

    assert stats["detections"] == len(clips)
    assert stats["detection_batches"] < len(clips)  # several jobs per detection batch
    for (language, clip), result in zip(clips.items(), results, strict=True):
        assert not isinstance(result, Exception), result
        alone = base_engine.transcribe(clip, TranscriptionOptions())
        assert result.language == alone.language == language
        # int8 on the CPU: a window's numbers depend a little on the batch it is in and on the
        # CPU's kernels (0.058 apart on an AMD EPYC host, within 0.05 on Intel ones).
        assert result.language_probability == pytest.approx(alone.language_probability, abs=0.1)
        assert result.text


def test_a_failing_language_detection_fails_only_its_job(model_cache_dir, speech, english_clip):
    engine = BatchScheduler(model_files("base", model_cache_dir), batch_size=4, max_wait_ms=400)
    clips = [english_clip] + [
        speech.say(text, voice=language, speed=speed)
        for language, (text, speed) in FOREIGN_SPEECH.items()
    ]
    # The first window's features of the French clip, computed as the job thread will.
    _clips, chunks, _metadata = split_speech(load_audio(clips[1]), vad=True)
    doomed = window_features(engine._model.feature_extractor, chunks[0])
    real = engine._detect_batch

    def detect(items):
        if any(np.array_equal(item.features, doomed) for item in items):
            raise RuntimeError("language detection failed on this window")
        return real(items)

    engine._detect_batch = detect
    try:
        results = run_jobs(
            engine, [{"path": clip, "options": TranscriptionOptions()} for clip in clips]
        )
        stats = engine.stats()
    finally:
        engine.close()

    assert isinstance(results[1], RuntimeError), results[1]
    assert [r.language for i, r in enumerate(results) if i != 1] == ["en", "de", "es"]
    assert stats["failed_windows"] == 1
    assert stats["queued_windows"] == 0


def test_silence_gives_an_empty_transcript(scheduler, speech):
    result = scheduler.transcribe(speech.silence(3), ENGLISH)

    assert result.text == ""
    assert result.segments == []


def test_silence_of_unknown_language_reports_no_language(model_cache_dir, speech):
    engine = BatchScheduler(model_files("base", model_cache_dir), batch_size=4, max_wait_ms=400)
    try:
        result = engine.transcribe(speech.silence(8), TranscriptionOptions())
    finally:
        engine.close()

    assert (result.text, result.segments) == ("", [])
    assert (result.language, result.language_probability) == ("", 0.0)


def test_settings_select_the_batching_engine(settings, model_cache_dir):
    from apps.audio_jobs.processing import engine_from_settings

    settings.WHISPER_CROSS_JOB_BATCHING = True
    settings.WHISPER_BATCH_SIZE = 3
    settings.WHISPER_BATCH_MAX_WAIT_MS = 7
    settings.WHISPER_MODEL_CACHE_DIR = model_cache_dir
    settings.WHISPER_DEVICE = "cpu"

    engine = engine_from_settings("faster-whisper", "tiny.en")

    assert isinstance(engine, BatchScheduler)
    assert engine.batch_size == 3
    assert engine.max_wait == pytest.approx(0.007)
    assert engine is get_engine(
        "faster-whisper",
        "tiny.en",
        "cpu",
        cache_dir=model_cache_dir,
        cpu_threads=settings.WHISPER_CPU_THREADS,
        batch_size=3,
        cross_job_batching=True,
        max_wait_ms=7,
    )


@pytest.mark.parametrize(
    ("setting", "device", "profile", "free_mb", "expected"),
    [
        (5, "cuda", "tiny.en", 80_000, 5),
        (None, "cpu", "tiny.en", None, 8),
        (None, "cuda", "tiny.en", 300, 15),
        (None, "cuda", "base", 300, 6),
        (None, "cuda", "tiny.en", 80_000, 32),
        (None, "cuda", "base", 40, 1),
    ],
)
def test_batch_size_comes_from_the_setting_or_free_gpu_memory(
    setting, device, profile, free_mb, expected
):
    assert choose_batch_size(setting, device=device, profile=profile, free_mb=free_mb) == expected


def test_two_model_streams_share_the_memory_budget():
    one = choose_batch_size(None, device="cuda", profile="tiny.en", free_mb=300)
    two = choose_batch_size(None, device="cuda", profile="tiny.en", free_mb=300, streams=2)
    assert (one, two) == (15, 7)


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(RuntimeError(OOM))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("cuBLAS failed with status CUBLAS_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("some other failure"))
    assert not is_out_of_memory(ValueError("out of memory"))


def _cuda_devices() -> int:
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count())
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() == 0, reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("prepare_processes", "model_streams"), [(0, 1), (2, 1), (2, 2)], ids=["plain", "pool", "2x"]
)
def test_cross_job_batching_on_cuda(
    model_cache_dir, tiny_engine, clips, prepare_processes, model_streams
):
    files = model_files("tiny.en", model_cache_dir)
    engine = BatchScheduler(
        files,
        device="cuda",
        max_wait_ms=200,
        prepare_processes=prepare_processes,
        model_streams=model_streams,
    )
    try:
        # As a GPU worker's preload does: every preparation process, then the model's warm-up.
        assert engine.warm() == prepare_processes
        results = run_jobs(engine, [{"path": clip} for clip in clips * 4])
        stats = engine.stats()
    finally:
        engine.close()

    assert stats["warm_ups"] == 1 and stats["warm_up_failures"] == 0
    assert stats["initial_batch_size"] >= 1
    assert stats["multi_job_batches"] >= 1
    assert stats["prepare_processes"] == prepare_processes
    assert stats["preparation_unavailable"] == 0
    for clip, result in zip(clips * 4, results, strict=True):
        assert wer(tiny_engine.transcribe(clip, ENGLISH).text, result.text) <= 0.1
        _assert_timestamps_sane(result)
        assert result.engine_info["device"] == "cuda"
