"""faster-whisper's VAD in bounded memory (``workers.engines.silero.StreamingOnnxVAD``): the
library's own ONNX model and batches, with each batch's input framed when it runs instead of
two framed copies of the whole file, gives the library's probabilities bit for bit; every engine
a worker loads uses it. Runs without PyTorch (the CPU image has none)."""

from __future__ import annotations

import tracemalloc

import faster_whisper.vad as library_vad
import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

from workers.engines import silero
from workers.engines.audio import load_audio

FRAME = silero.FRAME


def library_probabilities(audio: np.ndarray) -> np.ndarray:
    """The library's own model, on a copy (it zeroes part of its input in place)."""
    return library_vad.SileroVADModel(str(silero.default_model_path()))(audio.copy())


@pytest.fixture(scope="module")
def streaming() -> silero.StreamingOnnxVAD:
    return silero.StreamingOnnxVAD()


@pytest.fixture
def restore_library_vad(monkeypatch):
    monkeypatch.setattr(library_vad, "get_vad_model", library_vad.get_vad_model)


@pytest.mark.parametrize(
    "frames",
    [
        1,  # the first frame is also the last: no context, its own tail zeroed
        3,
        silero.StreamingOnnxVAD.BATCH_FRAMES,  # exactly one of the library's batches
        silero.StreamingOnnxVAD.BATCH_FRAMES + 1,  # a batch of one frame after a full one
        2 * silero.StreamingOnnxVAD.BATCH_FRAMES + 7,
    ],
)
def test_probabilities_equal_the_librarys_bit_for_bit(streaming, frames):
    noise = np.random.default_rng(frames).normal(0, 0.1, frames * FRAME).astype(np.float32)
    original = noise.copy()

    probabilities = streaming(noise)

    assert np.array_equal(noise, original)  # the caller's audio is left alone
    assert np.array_equal(probabilities, library_probabilities(noise))


def test_speech_gives_the_librarys_clips(clips, three_window_clip, restore_library_vad):
    """On speech with pauses, installed as the process's VAD: the same clips as the library."""
    audio = np.concatenate([load_audio(path) for path in [*clips, three_window_clip]])
    options = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)
    expected = get_speech_timestamps(audio, options)

    silero.use_streaming_onnx()
    installed = library_vad.get_vad_model()
    clips_found = get_speech_timestamps(audio, options)

    assert isinstance(installed, silero.StreamingOnnxVAD)
    assert len(expected) > 3 and clips_found == expected


def test_memory_stays_bounded_by_one_batch_not_the_file(streaming):
    """Ten minutes of audio: the library frames a copy of the whole file with each frame's
    context (~1.25x its size, measured) beside it; the streaming model holds one batch (~23 MB)
    and the probabilities."""
    audio = np.random.default_rng(3).normal(0, 0.1, 600 * 16_000).astype(np.float32)
    audio = audio[: len(audio) // FRAME * FRAME]

    def peak(function) -> int:
        tracemalloc.start()
        try:
            function(audio)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    library = library_vad.SileroVADModel(str(silero.default_model_path()))
    streamed, whole = peak(streaming), peak(library)

    assert whole > audio.nbytes  # 38.4 MB of audio
    assert streamed < 30 * 2**20  # one batch, whatever the file's length


def test_it_leaves_an_installed_pytorch_vad_in_place(restore_library_vad):
    sentinel = object()

    def installed():
        return sentinel

    installed._lexiscore_vad = "torch"  # what ``install("torch")`` marks
    library_vad.get_vad_model = installed

    silero.use_streaming_onnx()

    assert library_vad.get_vad_model() is sentinel


def test_constructing_an_engine_installs_it(restore_library_vad, model_cache_dir):
    """Every engine's VAD (faster-whisper's pipelines, the cross-job scheduler, the openai
    engine's split) is the streaming one once the engine exists, however it is built."""
    from workers.engines.faster import FasterWhisperEngine
    from workers.engines.models import prepare_model

    library_vad.get_vad_model = lambda: "the library's model"

    FasterWhisperEngine(prepare_model("tiny.en", cache_dir=model_cache_dir), cpu_threads=1)

    assert isinstance(library_vad.get_vad_model(), silero.StreamingOnnxVAD)
