"""Audio decoding shared by the engines: 16 kHz mono float32, as Whisper expects.

Files reach the engines only after ``apps.audio_jobs.media`` has validated them; decoding here
uses PyAV (bundled FFmpeg libraries, no subprocess) through faster-whisper's helper.
"""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from workers.engines.errors import AudioDecodeError

SAMPLE_RATE = 16_000

AudioArray = npt.NDArray[np.float32]


def load_audio(path: str | os.PathLike[str]) -> AudioArray:
    """Decode ``path`` to a 16 kHz mono float32 array; raise ``AudioDecodeError`` on failure."""
    import av
    from faster_whisper.audio import decode_audio

    try:
        audio = decode_audio(os.fspath(path), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
        # Only decoder failures: anything else (a Celery soft time limit raised inside the
        # decode, say) must reach the caller as itself.
        raise AudioDecodeError(f"Could not decode the audio file: {exc}") from exc
    if not isinstance(audio, np.ndarray):  # split_stereo=False always returns one array
        raise AudioDecodeError("Could not decode the audio file: unexpected decoder output.")
    return np.ascontiguousarray(audio, dtype=np.float32)


def duration_of(audio: AudioArray) -> float:
    """Length of a decoded array in seconds."""
    return float(audio.shape[0]) / SAMPLE_RATE
