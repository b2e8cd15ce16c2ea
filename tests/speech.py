"""Generate real audio for tests: speech with espeak-ng, silence and tones with sox, and
conversions to every upload format with ffmpeg.

``SpeechFactory`` caches by arguments, so a test session synthesises each clip once::

    speech = SpeechFactory(tmp_path_factory.mktemp("speech"))
    path = speech.say("Hello world.", fmt="mp3")
    french = speech.say("Bonjour à tous.", voice="fr", fmt="ogg")

Needs the ``espeak-ng``, ``sox`` and ``ffmpeg`` programs (installed in CI and the dev image).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import wave
from pathlib import Path

# ffmpeg arguments that produce each format; the key is also the file extension.
FORMAT_ARGS: dict[str, list[str]] = {
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "ogg": ["-c:a", "libvorbis", "-f", "ogg"],
    "opus": ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
    "m4a": ["-c:a", "aac", "-b:a", "64k", "-f", "mp4"],
    "webm": ["-c:a", "libopus", "-b:a", "32k", "-f", "webm"],
    "mka": ["-c:a", "libvorbis", "-f", "matroska"],
}


# Voices the speaker encoder tells apart (female 3, male 3, "Andy": centroids 0.66-0.71 alike);
# a conversation between the first two, in turns (diarization tests).
ALICE, BOB, CAROL = "en-us+f3", "en-us+m3", "en-us+Andy"
CONVERSATION = [
    (BOB, "Good morning everyone, thank you for joining the quarterly planning meeting today."),
    (ALICE, "Thanks for having me. I would like to start with the budget numbers for this year."),
    (BOB, "Sure, please go ahead and walk us through the main items on the list."),
    (ALICE, "The biggest change is the travel budget, which went down by almost a third."),
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is required to generate test audio; install it (apt).")
    return path


def _run(args: list[str]) -> None:
    completed = subprocess.run(args, capture_output=True, check=False, timeout=120)
    if completed.returncode != 0:
        stderr = completed.stderr.decode("utf-8", "replace")[-2000:]
        raise RuntimeError(f"{args[0]} failed ({completed.returncode}): {stderr}")


def synthesize(text: str, dst: Path, *, voice: str = "en-us", speed: int = 150) -> Path:
    """Speak ``text`` with espeak-ng into a WAV file (22.05 kHz mono)."""
    _run([_tool("espeak-ng"), "-v", voice, "-s", str(speed), "-w", str(dst), "--", text])
    return dst


def make_silence(dst: Path, seconds: float, *, sample_rate: int = 16000) -> Path:
    """Digital silence of ``seconds``, in the format given by ``dst``'s extension (sox)."""
    _run(
        [
            _tool("sox"),
            "-n",
            "-r",
            str(sample_rate),
            "-c",
            "1",
            "-b",
            "16",
            str(dst),
            "trim",
            "0",
            str(seconds),
        ]
    )
    return dst


def make_tone(dst: Path, seconds: float, *, frequency: int = 440, sample_rate: int = 16000) -> Path:
    """A sine tone of ``seconds`` (sox)."""
    _run(
        [
            _tool("sox"),
            "-n",
            "-r",
            str(sample_rate),
            "-c",
            "1",
            "-b",
            "16",
            str(dst),
            "synth",
            str(seconds),
            "sine",
            str(frequency),
        ]
    )
    return dst


def convert(src: Path, dst: Path, fmt: str, *, sample_rate: int | None = None) -> Path:
    """Re-encode ``src`` as ``fmt`` (a key of ``FORMAT_ARGS``) with ffmpeg."""
    rate = [] if sample_rate is None else ["-ar", str(sample_rate)]
    _run(
        [
            _tool("ffmpeg"),
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-ac",
            "1",
            *rate,
            *FORMAT_ARGS[fmt],
            str(dst),
        ]
    )
    return dst


def concatenate(parts: list[Path], dst: Path) -> Path:
    """Join audio files end to end: with the standard library where all are WAV files of one PCM
    format (what this module makes; no sox needed), else with sox (which also converts)."""
    params = set()
    try:
        for part in parts:
            with wave.open(str(part), "rb") as reader:
                params.add(reader.getparams()._replace(nframes=0))
    except (wave.Error, EOFError):
        params = set()
    if len(params) != 1:
        _run([_tool("sox"), *(str(p) for p in parts), str(dst)])
        return dst
    with wave.open(str(dst), "wb") as writer:
        writer.setparams(params.pop())
        for part in parts:
            with wave.open(str(part), "rb") as reader:
                writer.writeframes(reader.readframes(reader.getnframes()))
    return dst


class SpeechFactory:
    """Creates test audio under ``directory``, once per distinct set of arguments."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, kind: str, *key: object, fmt: str) -> Path:
        digest = hashlib.sha256(repr((kind, *key)).encode()).hexdigest()[:16]
        return self.directory / f"{kind}-{digest}.{fmt}"

    def say(
        self,
        text: str,
        *,
        voice: str = "en-us",
        speed: int = 150,
        fmt: str = "wav",
        sample_rate: int = 16000,
        lead_silence: float = 0.0,
    ) -> Path:
        """Speech for ``text`` in ``fmt``, resampled to ``sample_rate``.

        ``lead_silence`` prepends that many seconds of silence (timestamps then start later).
        """
        dst = self._path("say", text, voice, speed, sample_rate, lead_silence, fmt=fmt)
        with self._lock:
            if dst.exists():
                return dst
            raw = synthesize(
                text, self._path("raw", text, voice, speed, fmt="wav"), voice=voice, speed=speed
            )
            source = self.directory / f"{dst.stem}.src.wav"
            convert(raw, source, "wav", sample_rate=sample_rate)
            if lead_silence > 0:
                gap = make_silence(
                    self._path("gap", lead_silence, sample_rate, fmt="wav"),
                    lead_silence,
                    sample_rate=sample_rate,
                )
                source = concatenate([gap, source], self.directory / f"{dst.stem}.cat.wav")
            if fmt == "wav":
                shutil.copyfile(source, dst)
            else:
                convert(source, dst, fmt)
            return dst

    def dialogue(
        self, lines: list[tuple[str, str]], *, fmt: str = "wav"
    ) -> tuple[Path, list[tuple[float, float]]]:
        """``(voice, text)`` lines spoken one after the other (16 kHz), and each line's span in
        seconds: a conversation whose speaker turns are known."""
        parts = [self.say(text, voice=voice) for voice, text in lines]
        spans, at = [], 0.0
        for part in parts:
            with wave.open(str(part), "rb") as reader:
                seconds = reader.getnframes() / reader.getframerate()
            spans.append((at, at + seconds))
            at += seconds
        dst = self._path("dialogue", tuple(lines), fmt=fmt)
        with self._lock:
            if not dst.exists():
                joined = concatenate(parts, self.directory / f"{dst.stem}.cat.wav")
                if fmt == "wav":
                    shutil.copyfile(joined, dst)
                else:
                    convert(joined, dst, fmt)
        return dst, spans

    def silence(self, seconds: float, *, fmt: str = "wav", sample_rate: int = 16000) -> Path:
        """Digital silence in ``fmt``."""
        dst = self._path("silence", seconds, sample_rate, fmt=fmt)
        with self._lock:
            if dst.exists():
                return dst
            wav = make_silence(
                self._path("silence", seconds, sample_rate, fmt="wav"),
                seconds,
                sample_rate=sample_rate,
            )
            if fmt != "wav":
                convert(wav, dst, fmt)
            return dst

    def tone(self, seconds: float, *, frequency: int = 440, fmt: str = "wav") -> Path:
        """A steady sine tone in ``fmt``."""
        dst = self._path("tone", seconds, frequency, fmt=fmt)
        with self._lock:
            if dst.exists():
                return dst
            wav = make_tone(
                self._path("tone", seconds, frequency, fmt="wav"), seconds, frequency=frequency
            )
            if fmt != "wav":
                convert(wav, dst, fmt)
            return dst
