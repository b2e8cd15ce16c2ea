"""Audio decoding shared by the engines: 16 kHz mono float32, as Whisper expects.

Files reach the engines only after ``apps.audio_jobs.media`` has validated them; decoding here
uses PyAV (bundled FFmpeg libraries, no subprocess) as faster-whisper's ``decode_audio`` does,
with the same frames, resampler and conversion (the same samples), but without the full garbage
collection that function runs after every file. That ``gc.collect()`` freed resampler objects
caught in reference cycles by the PyAV of 2023 (faster-whisper issue 390); with the pinned PyAV
no decode leaves an unreachable object (``tests/engines/test_audio.py`` checks it), while a full
collection costs ~20-100 ms per file in a process holding PyTorch or Django and Celery, with the
GIL held: every job thread and the batch scheduler's thread stop meanwhile.
"""

from __future__ import annotations

import io
import os

import numpy as np
import numpy.typing as npt

from workers.engines.errors import AudioDecodeError

SAMPLE_RATE = 16_000

AudioArray = npt.NDArray[np.float32]


def load_audio(path: str | os.PathLike[str]) -> AudioArray:
    """Decode ``path`` to a 16 kHz mono float32 array; raise ``AudioDecodeError`` on failure."""
    import av

    try:
        audio = _decode(os.fspath(path))
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
        # Only decoder failures: anything else (a Celery soft time limit raised inside the
        # decode, say) must reach the caller as itself.
        raise AudioDecodeError(f"Could not decode the audio file: {exc}") from exc
    return np.ascontiguousarray(audio, dtype=np.float32)


def _decode(path: str) -> AudioArray:
    """``faster_whisper.audio.decode_audio(path)`` (mono, 16 kHz) without its ``gc.collect()``."""
    import av
    from faster_whisper.audio import _group_frames, _ignore_invalid_frames, _resample_frames

    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    raw = io.BytesIO()
    with av.open(path, mode="r", metadata_errors="ignore") as container:
        frames = _ignore_invalid_frames(container.decode(audio=0))
        for frame in _resample_frames(_group_frames(frames, 500_000), resampler):
            raw.write(frame.to_ndarray())
    # One float32 array (0.23 GB per audio hour), scaled in place: `astype(...) / 32768.0` held
    # two beside the 16-bit samples at the decode's peak. Dividing by a power of two is exact,
    # so the samples are the library's to the bit.
    samples = raw.getbuffer()
    audio = np.frombuffer(samples, dtype=np.int16).astype(np.float32)
    samples.release()
    raw.close()
    np.divide(audio, 32768.0, out=audio)
    return audio


def duration_of(audio: AudioArray) -> float:
    """Length of a decoded array in seconds."""
    return float(audio.shape[0]) / SAMPLE_RATE
