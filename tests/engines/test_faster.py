"""The faster-whisper engine on real models and real (espeak-ng) speech, on CPU."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from tests.engines.conftest import ENGLISH_TEXT, FOREIGN_SPEECH, REPO_ROOT, wer
from workers.engines import clear_engine_cache, get_engine, loaded_engines
from workers.engines.base import TranscriptionOptions
from workers.engines.errors import (
    ModelNotFoundError,
    ProfileError,
    TranscriptionCancelled,
    UnsupportedLanguageError,
)
from workers.engines.models import PROFILES

pytestmark = pytest.mark.slow

# tiny.en int8 transcribes this espeak clip with WER 0.0 on the development machine; the bound
# leaves room for numeric differences between CPUs (4 errors in 27 words).
MAX_ENGLISH_WER = 0.15

ENGLISH = TranscriptionOptions(language="en")


def _assert_timestamps_sane(result):
    previous_end = 0.0
    for segment in result.segments:
        assert 0.0 <= segment.start <= segment.end <= result.duration
        assert segment.start >= previous_end
        previous_end = segment.end
        word_floor = segment.start
        for word in segment.words:
            assert segment.start <= word.start <= word.end <= segment.end
            assert word.start >= word_floor
            word_floor = word.end


def test_tiny_en_transcribes_english_speech(tiny_engine, english_clip):
    result = tiny_engine.transcribe(english_clip, ENGLISH)

    assert wer(ENGLISH_TEXT, result.text) <= MAX_ENGLISH_WER
    assert result.language == "en"
    assert 8.0 < result.duration < 11.0
    assert result.text == " ".join(s.text.strip() for s in result.segments)


def test_timestamps_are_monotonic_and_inside_the_audio(tiny_engine, english_clip):
    result = tiny_engine.transcribe(english_clip, ENGLISH)

    _assert_timestamps_sane(result)
    assert len(result.words) >= 20
    assert result.segments[-1].end > result.duration - 2.0


def test_leading_silence_shifts_timestamps(tiny_engine, speech):
    clip = speech.say("Welcome to the weekly meeting.", lead_silence=3.0)

    result = tiny_engine.transcribe(clip, ENGLISH)

    assert wer("Welcome to the weekly meeting.", result.text) <= 0.2
    assert result.words[0].start >= 2.5
    _assert_timestamps_sane(result)


def test_engine_info_records_how_the_result_was_made(tiny_engine, english_clip):
    result = tiny_engine.transcribe(english_clip, ENGLISH)

    info = result.engine_info
    assert info["engine"] == "faster-whisper"
    assert info["model_profile"] == "tiny.en"
    assert info["model_sha256"] == PROFILES["tiny.en"].sha256
    assert info["device"] == "cpu"
    assert info["compute_type"] == "int8"
    assert info["cpu_threads"] == 2
    assert info["batched"] is False
    assert info["vad"] is True
    assert info["beam_size"] == 5


def test_silence_gives_an_empty_transcript(tiny_engine, speech):
    result = tiny_engine.transcribe(speech.silence(8), ENGLISH)

    assert result.text == ""
    assert result.segments == []
    assert result.duration == 8.0


@pytest.mark.parametrize("batch_size", [None, 8])
def test_silence_of_unknown_language_reports_no_language(model_cache_dir, speech, batch_size):
    """Detection on silence is a guess about nothing (it said "en" at 0.56, batched at 1.0)."""
    engine = get_engine(
        "faster-whisper",
        "base",
        "cpu",
        cache_dir=model_cache_dir,
        batch_size=batch_size,
        max_engines=8,
    )

    result = engine.transcribe(speech.silence(8), TranscriptionOptions())

    assert (result.text, result.segments) == ("", [])
    assert (result.language, result.language_probability) == ("", 0.0)


def test_silence_of_a_requested_language_reports_that_language(tiny_batched_engine, speech):
    result = tiny_batched_engine.transcribe(speech.silence(8), ENGLISH)

    assert (result.text, result.language, result.language_probability) == ("", "en", 1.0)


def test_a_steady_tone_gives_an_empty_transcript(base_engine, speech):
    result = base_engine.transcribe(speech.tone(6), TranscriptionOptions())

    assert result.text == ""


def test_text_without_words_when_word_timestamps_are_off(tiny_engine, english_clip):
    result = tiny_engine.transcribe(
        english_clip, TranscriptionOptions(language="en", word_timestamps=False)
    )

    assert wer(ENGLISH_TEXT, result.text) <= MAX_ENGLISH_WER
    assert result.words == []


def test_english_only_model_refuses_language_detection(tiny_engine, english_clip):
    with pytest.raises(ProfileError, match="English-only"):
        tiny_engine.transcribe(english_clip, TranscriptionOptions())


def test_a_language_missing_from_the_vocabulary_is_refused_before_decoding(
    base_engine, english_clip
):
    progress: list[float] = []

    with pytest.raises(UnsupportedLanguageError, match="'yue'"):
        base_engine.transcribe(
            english_clip,
            TranscriptionOptions(language="yue"),
            progress_callback=lambda done, total: progress.append(done),
        )
    assert progress == []


@pytest.mark.parametrize("language", ["fr", "de", "es"])
def test_base_detects_the_language(base_engine, speech, language):
    text, speed = FOREIGN_SPEECH[language]
    clip = speech.say(text, voice=language, speed=speed)

    result = base_engine.transcribe(clip, TranscriptionOptions())

    assert result.language == language
    assert result.language_probability > 0.5
    assert result.text


def test_base_transcribes_english_with_detection(base_engine, english_clip):
    result = base_engine.transcribe(english_clip, TranscriptionOptions())

    assert result.language == "en"
    assert wer(ENGLISH_TEXT, result.text) <= MAX_ENGLISH_WER


def test_batched_pipeline_transcribes_and_says_so(tiny_batched_engine, english_clip):
    result = tiny_batched_engine.transcribe(english_clip, ENGLISH)

    assert wer(ENGLISH_TEXT, result.text) <= MAX_ENGLISH_WER
    assert result.engine_info["batched"] is True
    assert result.engine_info["batch_size"] == 8
    _assert_timestamps_sane(result)
    assert result.words


def test_batched_engine_without_vad_falls_back_to_sequential(tiny_batched_engine, english_clip):
    result = tiny_batched_engine.transcribe(
        english_clip, TranscriptionOptions(language="en", vad=False)
    )

    assert result.engine_info["batched"] is False
    assert wer(ENGLISH_TEXT, result.text) <= MAX_ENGLISH_WER


def test_progress_is_reported_up_to_the_duration(tiny_engine, english_clip):
    calls = []

    result = tiny_engine.transcribe(
        english_clip, ENGLISH, progress_callback=lambda done, total: calls.append((done, total))
    )

    done, total = calls[-1]
    assert done == total
    assert abs(total - result.duration) < 0.001
    assert len(calls) >= 2
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_cancel_before_start_raises_without_decoding(tiny_engine, english_clip):
    with pytest.raises(TranscriptionCancelled) as caught:
        tiny_engine.transcribe(english_clip, ENGLISH, should_cancel=lambda: True)

    assert caught.value.seconds_done == 0.0


def test_cancel_mid_way_stops_before_the_end(tiny_engine, long_clip):
    progress = []

    def cancelled() -> bool:
        return bool(progress)  # stop once the first segment is out

    with pytest.raises(TranscriptionCancelled) as caught:
        tiny_engine.transcribe(
            long_clip,
            TranscriptionOptions(language="en", vad=False),
            progress_callback=lambda done, total: progress.append(done),
            should_cancel=cancelled,
        )

    assert 0.0 < caught.value.seconds_done < 30.0
    assert len(progress) == 1


def test_a_cancelled_batched_call_leaves_no_word_timing_state_to_the_next(
    tiny_batched_engine, three_window_clip, english_clip, monkeypatch
):
    """BatchedInferencePipeline keeps the last word's end on itself between batches, and resets
    it only when a call runs to its end: after a cancel the next job started from it."""
    engine = tiny_batched_engine
    starts: list[float] = []
    real = engine._model.add_word_timestamps

    def add_word_timestamps(*args, **kwargs):
        starts.append(args[-1])  # last_speech_timestamp, as the pipeline passes it
        return real(*args, **kwargs)

    monkeypatch.setattr(engine._model, "add_word_timestamps", add_word_timestamps)

    # Stopped at its first segment, once a batch's words were timed.
    with pytest.raises(TranscriptionCancelled):
        engine.transcribe(three_window_clip, ENGLISH, should_cancel=lambda: bool(starts))
    assert engine._batched.last_speech_timestamp == 0.0  # nothing left behind
    starts.clear()
    engine.transcribe(english_clip, ENGLISH)

    assert starts[0] == 0.0


@pytest.mark.parametrize(
    ("profile", "language", "clip"),
    [("tiny.en", "en", "three_window_clip"), ("base", None, "long_clip")],
)
def test_the_batched_engine_gives_the_pipelines_own_transcript(
    model_cache_dir, request, profile, language, clip
):
    """Batch by batch, the transcript, word timings and language are those of
    BatchedInferencePipeline.transcribe on the whole file (``long_clip``'s first window is short,
    so the detection reads two windows' features)."""
    from faster_whisper import BatchedInferencePipeline

    from workers.engines.audio import load_audio
    from workers.engines.base import finalize_segments
    from workers.engines.faster import segment_from_faster

    path = request.getfixturevalue(clip)
    engine = get_engine(
        "faster-whisper", profile, "cpu", cache_dir=model_cache_dir, batch_size=2, max_engines=8
    )

    ours = engine.transcribe(path, TranscriptionOptions(language=language))
    segments, info = BatchedInferencePipeline(engine._model).transcribe(
        load_audio(path), batch_size=2, language=language, word_timestamps=True, vad_filter=True
    )
    theirs = finalize_segments([segment_from_faster(s) for s in segments], duration=ours.duration)

    assert ours.segments == theirs
    assert ours.words
    assert ours.language == info.language
    assert ours.language_probability == round(info.language_probability, 4)
    assert ours.engine_info["duration_after_vad"] == round(info.duration_after_vad, 3)


class _Counting:
    """The model's feature extractor, counting the windows it makes features for."""

    def __init__(self, real) -> None:
        self._real = real
        self.windows = 0

    def __call__(self, *args, **kwargs):
        self.windows += 1
        return self._real(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def one_window_batches(model_cache_dir, monkeypatch):
    """A batched tiny.en engine of one window per batch, recording for each batch decoded how
    many windows' features had been made by then."""
    engine = get_engine(
        "faster-whisper", "tiny.en", "cpu", cache_dir=model_cache_dir, batch_size=1, max_engines=8
    )
    extractor = _Counting(engine._model.feature_extractor)
    monkeypatch.setattr(engine._model, "feature_extractor", extractor)
    decoded: list[int] = []
    real_forward = engine._batched.forward

    def forward(features, *args, **kwargs):
        decoded.append(extractor.windows)
        return real_forward(features, *args, **kwargs)

    monkeypatch.setattr(engine._batched, "forward", forward)
    return engine, extractor, decoded


def test_a_batchs_features_are_made_when_it_is_decoded(one_window_batches, three_window_clip):
    """The pipeline made every window's features first: memory grew with the file's length."""
    engine, _extractor, decoded = one_window_batches

    engine.transcribe(three_window_clip, ENGLISH)

    assert decoded == [1, 2, 3]


def test_a_cancel_is_seen_after_the_vad_before_any_features(one_window_batches, three_window_clip):
    engine, extractor, decoded = one_window_batches
    checks: list[int] = []

    def cancel_at_the_second_check() -> bool:
        checks.append(1)
        return len(checks) > 1

    with pytest.raises(TranscriptionCancelled):
        engine.transcribe(three_window_clip, ENGLISH, should_cancel=cancel_at_the_second_check)

    assert (extractor.windows, decoded) == (0, [])


def test_a_cancel_is_seen_between_batches(one_window_batches, three_window_clip):
    engine, extractor, decoded = one_window_batches

    with pytest.raises(TranscriptionCancelled):
        engine.transcribe(three_window_clip, ENGLISH, should_cancel=lambda: bool(decoded))

    assert (extractor.windows, decoded) == (1, [1])


def test_replacement_characters_from_the_model_are_cleaned(tiny_engine, english_clip, monkeypatch):
    # Whisper can emit U+FFFD when byte-level tokens do not form valid UTF-8 (seen with base on
    # French); the real model is wrapped so its segments carry one.
    model = tiny_engine._model
    real = model.transcribe

    def with_replacement_chars(*args, **kwargs):
        segments, info = real(*args, **kwargs)

        def damaged():
            for segment in segments:
                segment.text = segment.text.replace("report", "rep\ufffdort")
                for word in segment.words or []:
                    word.word = word.word.replace("report", "re\ufffd\ufffdport")
                yield segment

        return damaged(), info

    monkeypatch.setattr(model, "transcribe", with_replacement_chars)

    result = tiny_engine.transcribe(english_clip, ENGLISH)

    assert "\ufffd" not in result.text
    assert all("\ufffd" not in w.word for w in result.words)
    assert "report" in result.text


def test_get_engine_returns_one_shared_engine_per_configuration(model_cache_dir):
    engines = []

    def load():
        engines.append(get_engine("faster-whisper", "tiny.en", "cpu", cache_dir=model_cache_dir))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(engines) == 4
    assert all(engine is engines[0] for engine in engines)


def test_get_engine_refuses_an_unknown_engine(model_cache_dir):
    with pytest.raises(ValueError, match=r"Unknown engine 'whisper\.cpp'"):
        get_engine("whisper.cpp", "tiny.en", "cpu", cache_dir=model_cache_dir)


def test_engine_cache_keeps_at_most_max_engines(model_cache_dir):
    clear_engine_cache()

    first = get_engine(
        "faster-whisper", "tiny.en", cache_dir=model_cache_dir, compute_type="int8", max_engines=1
    )
    second = get_engine(
        "faster-whisper",
        "tiny.en",
        cache_dir=model_cache_dir,
        compute_type="float32",
        max_engines=1,
    )

    assert loaded_engines() == [second]
    assert first is not second
    clear_engine_cache()


def test_a_slow_load_holds_up_no_other_configuration(model_cache_dir, monkeypatch):
    """While one configuration loads (``base`` on a GPU: seconds), jobs needing another one,
    loaded or not, get it at once; callers of the loading one wait and share its load."""
    import workers.engines as engines

    clear_engine_cache()
    real_load = engines._load
    release = threading.Event()
    loads: list[str] = []

    def load(*args, **kwargs):
        compute_type = kwargs["faster"]["compute_type"]
        loads.append(compute_type)
        if compute_type == "float32":  # the slow one, held until released
            assert release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engines, "_load", load)

    def get(compute_type):
        return get_engine(
            "faster-whisper",
            "tiny.en",
            cache_dir=model_cache_dir,
            compute_type=compute_type,
            max_engines=4,
        )

    loaded = get("int8")
    slow: list[object] = []
    waiters = [threading.Thread(target=lambda: slow.append(get("float32"))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    try:
        deadline = time.monotonic() + 10
        while "float32" not in loads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loads == ["int8", "float32"]

        assert get("int8") is loaded  # already loaded
        other = get("int8_float32")  # loaded now, beside the held load
        assert loads == ["int8", "float32", "int8_float32"]
        assert not slow
    finally:
        release.set()
        for waiter in waiters:
            waiter.join(30)

    assert len(slow) == 3
    assert slow[0] is slow[1] is slow[2]
    assert loads.count("float32") == 1
    assert {id(e) for e in loaded_engines()} == {id(loaded), id(other), id(slow[0])}
    clear_engine_cache()


def test_a_failed_load_is_raised_and_tried_again_by_the_next_caller(model_cache_dir, monkeypatch):
    import workers.engines as engines

    clear_engine_cache()
    real_load = engines._load
    attempts = []

    def load(*args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:
            raise ModelNotFoundError("model.bin went missing")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engines, "_load", load)

    with pytest.raises(ModelNotFoundError):
        get_engine("faster-whisper", "tiny.en", cache_dir=model_cache_dir, compute_type="int8")
    assert loaded_engines() == []

    engine = get_engine("faster-whisper", "tiny.en", cache_dir=model_cache_dir, compute_type="int8")

    assert len(attempts) == 2
    assert loaded_engines() == [engine]
    clear_engine_cache()


def test_importing_the_package_does_not_load_the_engines():
    code = (
        "import sys, workers.engines, workers.engines.models, apps.audio_jobs.media, "
        "apps.audio_jobs.formats; "
        "heavy = {'torch', 'whisper', 'faster_whisper', 'ctranslate2'} & set(sys.modules); "
        "print(sorted(heavy))"
    )

    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )

    assert completed.stdout.strip() == "[]"
