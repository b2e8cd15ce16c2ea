"""Audio probing and validation with ffprobe/ffmpeg, before anything is queued.

Nothing about an upload is trusted: not its name, its Content-Type, or the duration its header
claims. ``probe_media``:

1. rejects empty files and files whose first bytes are not a supported container (magic bytes);
2. runs ffprobe without ``-f`` (the content decides), restricted to local files
   (``-protocol_whitelist file``) and to the allowed demuxers (``-format_whitelist``), so HLS
   playlists, ffconcat scripts and other demuxers that open further URLs are refused;
3. checks the container and the first audio stream's codec against an allow-list;
4. decodes the audio (forcing the demuxer ffprobe found) and counts the decoded samples, stopping
   once the cap is passed, under a wall-clock timeout and address-space/CPU limits.

Pure Python (no Django); errors carry a stable ``code``, an HTTP status and a message a user can
act on. ``detail`` holds tool output for logs and is not meant for users.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

SUPPORTED_DESCRIPTION = (
    "WAV, MP3, FLAC, Ogg (Vorbis or Opus), M4A/MP4 (AAC) or WebM/Matroska (Opus or Vorbis)"
)


class MediaError(Exception):
    """An upload that cannot be accepted. ``message`` is safe to show to the user."""

    code = "invalid_media"
    status_code = 400

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class UnsupportedMediaError(MediaError):
    """Not an allowed container/codec, or not audio at all."""

    code = "unsupported_media_type"
    status_code = 415


class CorruptMediaError(MediaError):
    """Looks like a supported format but cannot be read or decoded."""

    code = "corrupt_media"
    status_code = 400


class MediaTimeoutError(CorruptMediaError):
    """Probing or decoding took longer than allowed (a decode bomb, or a pathological file)."""

    code = "media_timeout"


class EmptyMediaError(MediaError):
    """Zero bytes, or no decodable audio."""

    code = "empty_media"
    status_code = 400


class DurationLimitError(MediaError):
    """The decoded audio is longer than allowed."""

    code = "duration_limit_exceeded"
    status_code = 413


class MediaToolError(RuntimeError):
    """ffmpeg/ffprobe is missing or misbehaved: a server problem, not the upload's fault."""


# ---------------------------------------------------------------------------------------------
# What is allowed
# ---------------------------------------------------------------------------------------------

_PCM = frozenset(
    {
        "pcm_s16le",
        "pcm_s24le",
        "pcm_s32le",
        "pcm_u8",
        "pcm_f32le",
        "pcm_f64le",
        "pcm_alaw",
        "pcm_mulaw",
    }
)


@dataclass(frozen=True)
class _Container:
    name: str  # the name ProbeResult reports
    demuxer: str  # forced with -f when decoding
    codecs: frozenset[str]
    mime_type: str


# Keyed by ffprobe's format_name (a demuxer's full name).
ALLOWED_CONTAINERS: dict[str, _Container] = {
    "wav": _Container("wav", "wav", _PCM, "audio/wav"),
    "mp3": _Container("mp3", "mp3", frozenset({"mp3"}), "audio/mpeg"),
    "flac": _Container("flac", "flac", frozenset({"flac"}), "audio/flac"),
    "ogg": _Container("ogg", "ogg", frozenset({"vorbis", "opus"}), "audio/ogg"),
    "mov,mp4,m4a,3gp,3g2,mj2": _Container("mp4", "mov", frozenset({"aac"}), "audio/mp4"),
    "matroska,webm": _Container(
        "matroska", "matroska", frozenset({"opus", "vorbis"}), "audio/webm"
    ),
}
# Demuxer short names for -format_whitelist; a demuxer is allowed when any of its names is.
FORMAT_WHITELIST = ",".join(sorted({c.demuxer for c in ALLOWED_CONTAINERS.values()}))
PROTOCOL_WHITELIST = "file"

DEFAULT_PROBE_TIMEOUT = 30.0
DEFAULT_DECODE_TIMEOUT = 300.0
DEFAULT_MEMORY_LIMIT = 1024 * 1024 * 1024  # address space for ffmpeg/ffprobe
MIN_DURATION = 0.1

# Decoded duration is measured by counting 8 kHz mono s16 samples on a pipe.
_COUNT_RATE = 8000
_BYTES_PER_SECOND = _COUNT_RATE * 2
_TAIL = 4096
# One decoder and filter thread: audio gains nothing from more, and ffmpeg's default of one
# thread per core would multiply the address space counted against the memory limit.
_ONE_THREAD = ("-filter_threads", "1", "-threads", "1")


@dataclass(frozen=True)
class ProbeResult:
    """What the file really is. ``duration_seconds`` is measured by decoding;
    ``header_duration_seconds`` is what the container claimed (for logs only)."""

    format_name: str
    codec: str
    duration_seconds: float
    sample_rate: int
    channels: int
    header_duration_seconds: float | None = None

    @property
    def mime_type(self) -> str:
        for container in ALLOWED_CONTAINERS.values():
            if container.name == self.format_name:
                return container.mime_type
        return "application/octet-stream"


# ---------------------------------------------------------------------------------------------
# Magic bytes
# ---------------------------------------------------------------------------------------------


def sniff_magic(head: bytes) -> str | None:
    """Name the container family the first bytes announce, or None if none allowed.

    Only a first gate: ffprobe decides. "id3" covers MP3 (and FLAC) files with an ID3v2 tag.
    """
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:3] == b"ID3":
        return "id3"
    # MPEG audio frame sync: 11 set bits, then a version and a layer that are not "reserved"
    # (layer 00 is ADTS AAC, which is not allowed on its own).
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        version = (head[1] >> 3) & 0b11
        layer = (head[1] >> 1) & 0b11
        if version != 0b01 and layer != 0b00:
            return "mp3"
    return None


# ---------------------------------------------------------------------------------------------
# Running the tools
# ---------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaToolError(f"{name} is not installed or not on PATH.")
    return path


def _limited(command: list[str], *, memory_limit: int | None, cpu_seconds: float) -> list[str]:
    """Prefix ``command`` with prlimit (util-linux) when available: an address-space cap and a
    CPU-time cap. prlimit sets the limits in the child before exec; Python's preexec_fn is not
    safe in threaded processes."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return command
    limits = [f"--cpu={math.ceil(cpu_seconds) + 1}"]
    if memory_limit:
        limits.append(f"--as={memory_limit}")
    return [prlimit, *limits, "--", *command]


def _input(path: Path) -> str:
    # The file: prefix stops a name like "http:x" or "-i" being read as a URL or an option.
    return "file:" + os.fspath(path.resolve())


def _run_probe(path: Path, *, timeout: float, memory_limit: int | None) -> dict[str, Any]:
    import json

    command = [
        _tool("ffprobe"),
        "-hide_banner",
        "-v",
        "error",
        "-threads",
        "1",
        "-protocol_whitelist",
        PROTOCOL_WHITELIST,
        "-format_whitelist",
        FORMAT_WHITELIST,
        "-of",
        "json",
        "-show_entries",
        "format=format_name,duration:"
        "stream=index,codec_type,codec_name,sample_rate,channels:stream_disposition=attached_pic",
        _input(path),
    ]
    try:
        completed = subprocess.run(  # noqa: S603 - fixed argv, no shell, input validated above
            _limited(command, memory_limit=memory_limit, cpu_seconds=timeout),
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaTimeoutError(
            "The file took too long to inspect. Re-encode it to a common format and try again.",
            detail=f"ffprobe timed out after {timeout}s",
        ) from exc
    stderr = completed.stderr.decode("utf-8", "replace")[-_TAIL:]
    if completed.returncode != 0:
        if "not on whitelist" in stderr:
            raise UnsupportedMediaError(
                f"This file type is not supported. Upload {SUPPORTED_DESCRIPTION}.",
                detail=stderr,
            )
        raise CorruptMediaError(
            "The file could not be read as audio; it may be damaged or incomplete. "
            "Re-export it and upload it again.",
            detail=stderr,
        )
    try:
        data = json.loads(completed.stdout or b"{}")
    except ValueError as exc:
        raise MediaToolError(f"ffprobe printed invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MediaToolError("ffprobe printed unexpected JSON.")
    return data


def _float_or_none(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _int_or_zero(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@dataclass
class _Decoded:
    seconds: float
    returncode: int | None
    stderr: str
    capped: bool


def _decode_duration(
    path: Path,
    *,
    demuxer: str,
    cap_seconds: float,
    timeout: float,
    memory_limit: int | None,
) -> _Decoded:
    """Decode the first audio stream to 8 kHz mono PCM on a pipe and count it.

    Stops (kills ffmpeg) once more than ``cap_seconds`` have been decoded, or at the timeout.
    """
    command = [
        _tool("ffmpeg"),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        *_ONE_THREAD,
        "-protocol_whitelist",
        PROTOCOL_WHITELIST,
        "-format_whitelist",
        FORMAT_WHITELIST,
        "-f",
        demuxer,
        "-i",
        _input(path),
        "-map",
        "0:a:0",
        "-ac",
        "1",
        "-ar",
        str(_COUNT_RATE),
        "-t",
        f"{cap_seconds:.3f}",
        "-f",
        "s16le",
        "pipe:1",
    ]
    cap_bytes = math.ceil(cap_seconds * _BYTES_PER_SECOND)
    deadline = time.monotonic() + timeout
    count = 0
    tail = b""
    capped = False
    process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell, input validated above
        _limited(command, memory_limit=memory_limit, cpu_seconds=timeout),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    selector.register(process.stderr, selectors.EVENT_READ)
    try:
        open_streams = 2
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MediaTimeoutError(
                    "The audio took too long to decode. Re-encode it to a common format and "
                    "try again.",
                    detail=f"ffmpeg timed out after {timeout}s ({count} bytes out)",
                )
            for key, _ in selector.select(timeout=min(remaining, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                elif key.fileobj is process.stdout:
                    count += len(chunk)
                    if count > cap_bytes:
                        capped = True
                        open_streams = 0
                        break
                else:
                    tail = (tail + chunk)[-_TAIL:]
        if capped:
            process.kill()
        returncode = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired as exc:
        raise MediaTimeoutError(
            "The audio took too long to decode.", detail="ffmpeg did not exit"
        ) from exc
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        selector.close()
        process.stdout.close()
        process.stderr.close()
    return _Decoded(
        seconds=count / _BYTES_PER_SECOND,
        returncode=None if capped else returncode,
        stderr=tail.decode("utf-8", "replace"),
        capped=capped,
    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def probe_media(
    path: str | os.PathLike[str],
    *,
    max_duration_seconds: float,
    min_duration_seconds: float = MIN_DURATION,
    probe_timeout_seconds: float = DEFAULT_PROBE_TIMEOUT,
    decode_timeout_seconds: float = DEFAULT_DECODE_TIMEOUT,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT,
    allow_video: bool = False,
) -> ProbeResult:
    """Validate an uploaded file and measure its decoded duration.

    Raises ``EmptyMediaError``, ``UnsupportedMediaError``, ``CorruptMediaError`` (including
    ``MediaTimeoutError``) or ``DurationLimitError``; ``MediaToolError`` when ffmpeg is missing.
    ``allow_video`` accepts files that also carry video streams (only the audio is decoded);
    cover art in MP3/M4A files is always accepted.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise EmptyMediaError("The file is empty.")
    with path.open("rb") as fh:
        head = fh.read(64)
    if sniff_magic(head) is None:
        raise UnsupportedMediaError(
            f"This file is not a supported audio file. Upload {SUPPORTED_DESCRIPTION}.",
            detail=f"magic bytes {head[:16].hex()}",
        )

    info = _run_probe(path, timeout=probe_timeout_seconds, memory_limit=memory_limit_bytes)
    fmt = info.get("format") or {}
    format_name = str(fmt.get("format_name", ""))
    container = ALLOWED_CONTAINERS.get(format_name)
    if container is None:
        raise UnsupportedMediaError(
            f"This file type is not supported. Upload {SUPPORTED_DESCRIPTION}.",
            detail=f"ffprobe format {format_name!r}",
        )
    streams = [s for s in info.get("streams") or [] if isinstance(s, dict)]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not audio:
        raise UnsupportedMediaError("The file contains no audio track.", detail=str(streams))
    codec = str(audio[0].get("codec_name", ""))
    if codec not in container.codecs:
        allowed = ", ".join(sorted(container.codecs))
        raise UnsupportedMediaError(
            f"The {container.name} file uses the {codec or 'unknown'} codec, which is not "
            f"supported here (supported: {allowed}). Re-encode it and try again.",
            detail=f"codec {codec!r}",
        )
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if videos and not allow_video:
        raise UnsupportedMediaError(
            "The file contains video. Upload the audio only (for example as M4A or MP3)."
        )

    decoded = _decode_duration(
        path,
        demuxer=container.demuxer,
        cap_seconds=max_duration_seconds + 1.0,
        timeout=decode_timeout_seconds,
        memory_limit=memory_limit_bytes,
    )
    header_duration = _float_or_none(fmt.get("duration"))
    if decoded.capped or decoded.seconds > max_duration_seconds:
        raise DurationLimitError(
            f"The audio is longer than the limit of {_format_seconds(max_duration_seconds)}. "
            "Split it into shorter files and upload them separately.",
            detail=f"decoded more than {decoded.seconds:.1f}s; header said {header_duration}",
        )
    if decoded.returncode != 0:
        raise CorruptMediaError(
            "The audio could not be decoded; the file may be damaged or incomplete. "
            "Re-export it and upload it again.",
            detail=f"ffmpeg exit {decoded.returncode}: {decoded.stderr}",
        )
    if decoded.seconds < min_duration_seconds:
        raise EmptyMediaError(
            "The file contains no playable audio.",
            detail=f"decoded {decoded.seconds:.3f}s; stderr: {decoded.stderr}",
        )
    if header_duration is not None and abs(header_duration - decoded.seconds) > 1.0:
        logger.info(
            "media header duration differs from decoded duration",
            extra={"header_duration": header_duration, "decoded_duration": decoded.seconds},
        )
    return ProbeResult(
        format_name=container.name,
        codec=codec,
        duration_seconds=round(decoded.seconds, 3),
        sample_rate=_int_or_zero(audio[0].get("sample_rate")),
        channels=_int_or_zero(audio[0].get("channels")),
        header_duration_seconds=header_duration,
    )


def normalise_to_wav(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    probe: ProbeResult | None = None,
    max_duration_seconds: float | None = None,
    timeout_seconds: float = DEFAULT_DECODE_TIMEOUT,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT,
) -> Path:
    """Write ``src``'s first audio stream to ``dst`` as 16 kHz mono 16-bit PCM WAV.

    Uses the same protocol and demuxer restrictions as ``probe_media`` (and forces the demuxer
    when ``probe`` is given). ``dst`` appears only when complete (temporary file, then rename).
    """
    limit = [] if max_duration_seconds is None else ["-t", f"{max_duration_seconds:.3f}"]
    return _transcode(
        src,
        dst,
        ["-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", *limit, "-f", "wav"],
        suffix=".wav",
        probe=probe,
        timeout_seconds=timeout_seconds,
        memory_limit_bytes=memory_limit_bytes,
        failure="The audio could not be converted; the file may be damaged.",
    )


def silence_spans(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    spans: list[tuple[float, float]],
    *,
    timeout_seconds: float = DEFAULT_DECODE_TIMEOUT,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT,
) -> Path:
    """Write ``src``'s first audio stream to ``dst`` as FLAC (its sample rate and channels kept,
    lossless from the decoded audio, no metadata) with every ``(start, end)`` span, in seconds,
    silent.

    The spans are merged first (overlapping or touching). ffmpeg evaluates a filter's `enable`
    expression once per frame, at the frame's start: frames are cut to `SILENCE_FRAME_SAMPLES`
    first (a decoder's frames can be half a second long), and the spans go in chained `volume`
    filters of at most `SILENCE_TERMS_PER_FILTER` each (ffmpeg 5 refuses an expression of more
    than 100 terms), written to a script file so that thousands of spans cannot exceed the
    command line's length. Tags and chapters are dropped: they may hold what was redacted.
    """
    merged = merge_spans(spans)
    dst_path = Path(dst)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    fd, script = tempfile.mkstemp(prefix=f".{dst_path.name}.", suffix=".filter")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(_silence_filter(merged))
        return _transcode(
            src,
            dst,
            [
                *("-map_metadata", "-1", "-map_chapters", "-1"),
                *("-filter_script:a", script, "-c:a", "flac", "-f", "flac"),
            ],
            suffix=".flac",
            timeout_seconds=timeout_seconds,
            memory_limit_bytes=memory_limit_bytes,
            failure="The audio could not be re-encoded with its redacted spans silenced.",
        )
    finally:
        Path(script).unlink(missing_ok=True)


# At most 16 ms a frame at 8 kHz (telephone audio), 2.7 ms at 48 kHz.
SILENCE_FRAME_SAMPLES = 128
SILENCE_TERMS_PER_FILTER = 50


def _silence_filter(spans: list[tuple[float, float]]) -> str:
    if not spans:
        return "anull"
    filters = [f"asetnsamples=n={SILENCE_FRAME_SAMPLES}:p=0"]
    for first in range(0, len(spans), SILENCE_TERMS_PER_FILTER):
        chunk = spans[first : first + SILENCE_TERMS_PER_FILTER]
        terms = "+".join(f"between(t,{a:.3f},{b:.3f})" for a, b in chunk)
        filters.append(f"volume=enable='{terms}':volume=0")
    return ",".join(filters)


def merge_spans(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Time spans (clipped at 0) sorted, with overlapping or touching ones merged."""
    merged: list[list[float]] = []
    for start, end in sorted((max(0.0, a), b) for a, b in spans if b > max(0.0, a)):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _transcode(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    output_args: list[str],
    *,
    suffix: str,
    timeout_seconds: float,
    memory_limit_bytes: int | None,
    failure: str,
    probe: ProbeResult | None = None,
) -> Path:
    """Run ffmpeg on ``src``'s first audio stream with ``output_args``, restricted as
    ``probe_media`` is; ``dst`` appears only when complete (temporary file, then rename)."""
    src_path, dst_path = Path(src), Path(dst)
    demuxer: list[str] = []
    if probe is not None:
        for container in ALLOWED_CONTAINERS.values():
            if container.name == probe.format_name:
                demuxer = ["-f", container.demuxer]
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst_path.name}.", suffix=suffix, dir=dst_path.parent)
    os.close(fd)
    command = [
        _tool("ffmpeg"),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-y",
        *_ONE_THREAD,
        "-protocol_whitelist",
        PROTOCOL_WHITELIST,
        "-format_whitelist",
        FORMAT_WHITELIST,
        *demuxer,
        "-i",
        _input(src_path),
        "-map",
        "0:a:0",
        *output_args,
        "file:" + os.fspath(Path(tmp).resolve()),
    ]
    try:
        completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            _limited(command, memory_limit=memory_limit_bytes, cpu_seconds=timeout_seconds),
            capture_output=True,
            timeout=timeout_seconds,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if completed.returncode != 0:
            raise CorruptMediaError(
                failure, detail=completed.stderr.decode("utf-8", "replace")[-_TAIL:]
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst_path)
    except subprocess.TimeoutExpired as exc:
        raise MediaTimeoutError(
            "The audio took too long to convert.",
            detail=f"ffmpeg timed out after {timeout_seconds}s",
        ) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst_path


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min" + (f" {secs} s" if secs else "")
    return f"{secs} s"
