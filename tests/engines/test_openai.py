"""The openai-whisper engine on CPU, with the checkpoint converted from the CTranslate2 model."""

from __future__ import annotations

import hashlib

import pytest

from tests.engines.conftest import ENGLISH_TEXT, FOREIGN_SPEECH, wer
from workers.engines.base import TranscriptionOptions
from workers.engines.ct2 import read_ct2_model
from workers.engines.errors import ModelFormatError, TranscriptionCancelled
from workers.engines.models import PROFILES, prepare_model
from workers.engines.openai import (
    checkpoint_path,
    convert_checkpoint,
    to_mel_clips,
    whisper_dims,
    whisper_state_dict,
)

pytestmark = pytest.mark.slow

ENGLISH = TranscriptionOptions(language="en")


@pytest.mark.parametrize(
    ("profile", "dims"),
    [
        (
            "tiny.en",
            {
                "n_mels": 80,
                "n_audio_ctx": 1500,
                "n_audio_state": 384,
                "n_audio_head": 6,
                "n_audio_layer": 4,
                "n_vocab": 51864,
                "n_text_ctx": 448,
                "n_text_state": 384,
                "n_text_head": 6,
                "n_text_layer": 4,
            },
        ),
        (
            "base",
            {
                "n_mels": 80,
                "n_audio_ctx": 1500,
                "n_audio_state": 512,
                "n_audio_head": 8,
                "n_audio_layer": 6,
                "n_vocab": 51865,
                "n_text_ctx": 448,
                "n_text_state": 512,
                "n_text_head": 8,
                "n_text_layer": 6,
            },
        ),
    ],
)
def test_conversion_matches_openai_whisper_names_and_shapes(model_cache_dir, profile, dims):
    import torch
    from whisper.model import ModelDimensions, Whisper

    files = prepare_model(profile, cache_dir=model_cache_dir)

    ct2 = read_ct2_model(files.model_bin)
    got_dims = whisper_dims(ct2)
    state = whisper_state_dict(ct2, got_dims)

    assert got_dims == dims
    expected = Whisper(ModelDimensions(**dims)).state_dict()
    assert set(state) == set(expected)
    assert all(tuple(state[k].shape) == tuple(expected[k].shape) for k in expected)
    model = Whisper(ModelDimensions(**dims))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)


def test_checkpoint_is_written_once_and_rebuilt_when_damaged(tmp_path):
    files = prepare_model("tiny.en", cache_dir=tmp_path)
    first = convert_checkpoint(files, tmp_path)
    written_at = first.stat().st_mtime_ns
    digest_file = first.with_name(first.name + ".sha256")

    again = convert_checkpoint(files, tmp_path)
    unchanged_at = again.stat().st_mtime_ns
    with first.open("r+b") as fh:
        fh.seek(first.stat().st_size // 2)
        fh.write(b"\x00" * 16)
    rebuilt = convert_checkpoint(files, tmp_path)

    assert first == again == rebuilt == checkpoint_path(files, tmp_path)
    assert unchanged_at == written_at
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == digest_file.read_text().strip()
    assert not list(first.parent.glob("*.tmp"))


def test_a_truncated_model_bin_raises_model_format_error(tmp_path):
    files = prepare_model("tiny.en", cache_dir=tmp_path)
    truncated = tmp_path / "model.bin"
    truncated.write_bytes(files.model_bin.read_bytes()[:1_000_000])

    with pytest.raises(ModelFormatError, match=r"truncated|past the end"):
        read_ct2_model(truncated)


def test_openai_engine_matches_faster_whisper(openai_tiny_engine, tiny_engine, english_clip):
    openai_result = openai_tiny_engine.transcribe(english_clip, ENGLISH)
    faster_result = tiny_engine.transcribe(english_clip, ENGLISH)

    assert wer(ENGLISH_TEXT, openai_result.text) <= 0.15
    # Same weights; faster-whisper runs them in int8, openai-whisper in fp32.
    assert wer(faster_result.text, openai_result.text) <= 0.1
    assert openai_result.language == "en"
    assert openai_result.engine_info["engine"] == "openai-whisper"
    assert openai_result.engine_info["model_sha256"] == PROFILES["tiny.en"].sha256
    assert openai_result.engine_info["compute_type"] == "float32"


def test_openai_engine_gives_word_timestamps(openai_tiny_engine, english_clip):
    result = openai_tiny_engine.transcribe(english_clip, ENGLISH)

    assert len(result.words) >= 20
    previous = 0.0
    for segment in result.segments:
        assert previous <= segment.start <= segment.end <= result.duration
        previous = segment.end
        for word in segment.words:
            assert segment.start <= word.start <= word.end <= segment.end
    assert result.words[-1].end > result.duration - 2.0


def test_openai_engine_gives_nothing_for_silence(openai_tiny_engine, speech):
    result = openai_tiny_engine.transcribe(speech.silence(6), ENGLISH)

    assert result.text == ""
    assert result.segments == []


def test_openai_engine_reports_no_language_for_silence_of_unknown_language(model_cache_dir, speech):
    from workers.engines import get_engine

    engine = get_engine("openai-whisper", "base", "cpu", cache_dir=model_cache_dir, max_engines=8)

    result = engine.transcribe(speech.silence(6), TranscriptionOptions())

    assert (result.text, result.language, result.language_probability) == ("", "", 0.0)


def test_openai_engine_reports_progress_and_can_be_cancelled(openai_tiny_engine, long_clip):
    progress = []

    with pytest.raises(TranscriptionCancelled) as caught:
        openai_tiny_engine.transcribe(
            long_clip,
            TranscriptionOptions(language="en", vad=False),
            progress_callback=lambda done, total: progress.append((done, total)),
            should_cancel=lambda: bool(progress),
        )

    assert len(progress) == 1
    done, total = progress[0]
    assert 0.0 < done < total
    assert caught.value.seconds_done == done


def test_mel_clips_never_end_past_the_audio():
    import numpy as np

    audio = np.zeros(16000 * 10 + 37, dtype=np.float32)  # 10.0023 s: 1000 whole mel frames

    clips = to_mel_clips([(0.0, 10.0023), (10.0, 10.001), (2.004, 3.456)], audio)

    assert clips == [(0.0, 10.0), (2.0, 3.46)]


def test_openai_engine_on_base_detects_the_language(model_cache_dir, speech):
    from workers.engines import get_engine

    engine = get_engine("openai-whisper", "base", "cpu", cache_dir=model_cache_dir, max_engines=8)
    text, speed = FOREIGN_SPEECH["de"]

    result = engine.transcribe(speech.say(text, voice="de", speed=speed), TranscriptionOptions())

    assert result.language == "de"
    assert result.language_probability > 0.5
    assert wer(text, result.text) <= 0.3
    assert result.words
