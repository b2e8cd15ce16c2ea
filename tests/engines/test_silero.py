"""Silero VAD in PyTorch (workers/engines/silero.py): the weights of faster-whisper's pinned ONNX
model, the same speech probabilities as ONNX Runtime gives, the same speech clips, the state
carried across chunks of a long file, and the preparation processes running it."""

from __future__ import annotations

import logging
import shutil

import faster_whisper.vad as library_vad
import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

pytest.importorskip("torch")  # the module's reason to exist; the CPU image runs ONNX Runtime's

from tests.engines.conftest import SENTENCES
from workers.engines import silero
from workers.engines.audio import load_audio
from workers.preparation import PreparationPool, prepare_for_batching

SPLIT = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def recording(clips, three_window_clip) -> np.ndarray:
    """Speech, pauses, 3 s of digital silence and 20 s of noise: about two minutes, ending
    500 samples into its last 512-sample frame (padded, that frame's last 64 samples are noise,
    which the library zeroes: the frame the two implementations are most likely to differ on)."""
    noise = np.random.default_rng(7).normal(0, 0.05, 20 * 16_000).astype(np.float32)
    parts = [load_audio(path) for path in [*clips, three_window_clip]]
    audio = np.concatenate([*parts, np.zeros(3 * 16_000, np.float32), noise])
    return audio[: len(audio) // silero.FRAME * silero.FRAME - 12]


def _padded(audio: np.ndarray) -> np.ndarray:
    """What ``get_speech_timestamps`` gives the model: zeros up to the next whole frame."""
    return np.pad(audio, (0, silero.FRAME - len(audio) % silero.FRAME))


def _onnx(audio: np.ndarray) -> np.ndarray:
    """The library's own model's probabilities (ONNX Runtime), on a copy: it zeroes part of its
    input in place. Not ``get_vad_model()``, which a loaded engine makes ``StreamingOnnxVAD``."""
    return library_vad.SileroVADModel(str(silero.default_model_path()))(audio.copy())


@pytest.fixture(scope="module")
def torch_vad() -> silero.TorchSileroVAD:
    return silero.TorchSileroVAD()


@pytest.fixture
def restore_library_vad(monkeypatch):
    """``install`` replaces the library's model factory for the process: put it back."""
    monkeypatch.setattr(library_vad, "get_vad_model", library_vad.get_vad_model)


def test_weights_come_from_the_pinned_model_file():
    weights = silero.load_weights()

    assert weights["encoder.feature_extractor.forward_basis_buffer"].shape == (258, 1, 256)
    assert weights["encoder.conv_layers.0.weight"].shape == (128, 129, 3)
    assert [weights[name].shape for name in silero.LSTM_WEIGHTS] == [
        (1, 512, 128),
        (1, 512, 128),
        (1, 1024),
    ]
    assert all(array.dtype == np.float32 for array in weights.values())


def test_another_model_file_is_refused(tmp_path):
    changed = tmp_path / silero.MODEL_FILE
    shutil.copy(silero.default_model_path(), changed)
    data = bytearray(changed.read_bytes())
    data[-100] ^= 0xFF
    changed.write_bytes(bytes(data))

    with pytest.raises(silero.SileroModelError, match="not the pinned Silero VAD v6 model"):
        silero.TorchSileroVAD(changed)


def test_probabilities_match_onnx_runtime(torch_vad, recording):
    audio = _padded(recording)
    original = audio.copy()

    expected = _onnx(audio)
    probabilities = torch_vad(audio)

    assert np.array_equal(audio, original)  # the caller's audio is left alone
    assert probabilities.shape == expected.shape == (len(audio) // silero.FRAME,)
    assert probabilities.dtype == np.float32
    assert np.abs(audio[-silero.FRAME : -12]).max() > 0.05  # the last frame is noise, not zeros
    assert np.abs(probabilities - expected).max() < 2e-5
    # Not a trivial agreement: speech and non-speech are both there.
    assert (expected > 0.9).mean() > 0.3 and (expected < 0.1).mean() > 0.1


def test_a_long_file_is_processed_in_chunks_with_the_state_carried(
    torch_vad, recording, monkeypatch
):
    audio = _padded(recording)
    whole = torch_vad(audio)

    monkeypatch.setattr(silero, "CHUNK_FRAMES", 97)
    chunked = torch_vad(audio)

    assert len(audio) // silero.FRAME > 20 * 97
    assert np.abs(chunked - whole).max() < 1e-5


def test_bad_input_is_refused(torch_vad):
    with pytest.raises(ValueError, match="multiple of 512"):
        torch_vad(np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match="one-dimensional"):
        torch_vad(np.zeros((2, 512), np.float32))
    with pytest.raises(ValueError, match="frames of 512 samples"):
        torch_vad(np.zeros(1024, np.float32), num_samples=256)
    assert torch_vad(np.zeros(0, np.float32)).shape == (0,)


def test_installed_it_gives_the_librarys_speech_clips(recording, restore_library_vad):
    expected = get_speech_timestamps(recording, SPLIT)

    assert silero.install("torch") == "torch"
    clips = get_speech_timestamps(recording, SPLIT)

    assert isinstance(library_vad.get_vad_model(), silero.TorchSileroVAD)
    assert len(expected) >= len(SENTENCES)
    assert clips == expected


def test_install_choices(restore_library_vad, caplog, monkeypatch):
    original = library_vad.get_vad_model

    assert silero.install("onnx") == "onnx"
    assert isinstance(library_vad.get_vad_model(), silero.StreamingOnnxVAD)
    monkeypatch.setattr(library_vad, "get_vad_model", original)
    with pytest.raises(ValueError, match="Unknown VAD engine"):
        silero.install("webrtc")
    if not _cuda_available():
        # auto falls back to ONNX Runtime's VAD with an error logged; torch insists.
        with caplog.at_level(logging.ERROR, logger="workers.engines.silero"):
            assert silero.install("auto", device="cuda") == "onnx"
        assert "could not load on cuda" in caplog.text
        assert isinstance(library_vad.get_vad_model(), silero.StreamingOnnxVAD)
        monkeypatch.setattr(library_vad, "get_vad_model", original)
        with pytest.raises(Exception):  # noqa: B017 - whatever torch raises without CUDA
            silero.install("torch", device="cuda")
        assert library_vad.get_vad_model is original
    assert silero.install("auto") == "torch"  # PyTorch is installed here


@pytest.mark.slow
def test_preparation_processes_run_the_chosen_vad(three_window_clip, caplog):
    feature_kwargs = {"feature_size": 80}
    inline = prepare_for_batching(str(three_window_clip), True, feature_kwargs, max_windows=10)
    pools = {engine: PreparationPool(1, vad_engine=engine) for engine in ("torch", "onnx")}
    try:
        for pool in pools.values():
            pool.check()
        prepared = {
            engine: pool.prepare(three_window_clip, True, feature_kwargs)
            for engine, pool in pools.items()
        }
    finally:
        for pool in pools.values():
            pool.close()

    assert {engine: pool.vad_in_use for engine, pool in pools.items()} == {
        "torch": "torch",
        "onnx": "onnx",
    }
    for engine, result in prepared.items():
        assert result.vad == engine
        assert result.clips == inline.clips
        assert len(result.features) == len(inline.features) == 3
    assert inline.vad == "onnx"  # this process runs the library's own
    with pytest.raises(ValueError, match="Unknown VAD engine"):
        PreparationPool(1, vad_engine="webrtc")


@pytest.mark.slow
@pytest.mark.skipif(_cuda_available(), reason="checks the fallback on a machine without CUDA")
def test_processes_that_cannot_load_the_vad_fall_back_and_say_so(caplog):
    pool = PreparationPool(1, vad_engine="torch", vad_device="cuda")
    try:
        with caplog.at_level(logging.ERROR, logger="workers.preparation"):
            pool.check()
    finally:
        pool.close()

    assert pool.vad_in_use == "onnx"
    assert "run the onnx VAD: the torch VAD on cuda could not load" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
def test_probabilities_on_cuda_match_onnx_runtime(recording):
    audio = _padded(recording)

    probabilities = silero.TorchSileroVAD(device="cuda")(audio)

    assert np.abs(probabilities - _onnx(audio)).max() < 1e-4
