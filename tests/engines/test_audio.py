"""Decoding (workers/engines/audio.py): the samples faster-whisper's ``decode_audio`` gives, for
any format and rate, without its full garbage collection per file, which the pinned PyAV does not
need: decoding leaves no unreachable objects behind."""

from __future__ import annotations

import gc
import subprocess

import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from tests.engines.conftest import ENGLISH_TEXT
from workers.engines.audio import SAMPLE_RATE, load_audio
from workers.engines.errors import AudioDecodeError


@pytest.fixture(scope="module")
def encoded(speech, tmp_path_factory):
    """The same speech as 16 kHz WAV, 44.1 kHz MP3, Ogg Vorbis, 22.05 kHz FLAC, AAC (M4A) and
    44.1 kHz stereo WAV (downmixed by the resampler)."""
    wav = speech.say(ENGLISH_TEXT)
    stereo = tmp_path_factory.mktemp("stereo") / "stereo.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-ac", "2", "-ar", "44100",
         "-af", "pan=stereo|c0=c0|c1=0.5*c0", str(stereo)],
        check=True,
    )  # fmt: skip
    return [
        wav,
        speech.say(ENGLISH_TEXT, fmt="mp3", sample_rate=44_100),
        speech.say(ENGLISH_TEXT, fmt="ogg"),
        speech.say(ENGLISH_TEXT, fmt="flac", sample_rate=22_050),
        speech.say(ENGLISH_TEXT, fmt="m4a"),
        stereo,
    ]


def test_samples_are_those_faster_whisper_decodes(encoded):
    for path in encoded:
        audio = load_audio(path)

        assert audio.dtype == np.float32
        assert audio.flags.c_contiguous
        assert np.array_equal(audio, decode_audio(str(path), sampling_rate=SAMPLE_RATE)), path
        assert len(audio) > SAMPLE_RATE  # seconds of speech, not an empty array


def test_decoding_leaves_no_reference_cycles(encoded):
    """What faster-whisper's gc.collect() after every file was for (its issue 390); if a PyAV
    upgrade brings the cycles back, this fails and the collection must return. Only PyAV's and
    this module's objects count: other threads of the test process may leave garbage too."""
    load_audio(encoded[1])  # imports and first-use caches outside the measurement
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collection finds stays in gc.garbage
    try:
        for path in encoded * 3:
            load_audio(path)
        gc.collect()
        leaked = [
            type(obj)
            for obj in gc.garbage
            if type(obj).__module__.startswith(("av.", "workers.engines.audio"))
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

    assert leaked == []


def test_an_undecodable_file_raises_a_decode_error(tmp_path):
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3" + b"\x00garbage" * 500)

    with pytest.raises(AudioDecodeError, match="Could not decode the audio file"):
        load_audio(broken)


def test_a_file_without_audio_gives_no_samples(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(
        b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80>\x00\x00\x00}\x00\x00"
        b"\x02\x00\x10\x00data\x00\x00\x00\x00"
    )

    audio = load_audio(empty)

    assert audio.dtype == np.float32
    assert audio.shape == (0,)
