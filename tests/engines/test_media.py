"""Upload validation with real files: every allowed format, and the hostile ones."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from apps.audio_jobs import media
from apps.audio_jobs.media import (
    CorruptMediaError,
    DurationLimitError,
    EmptyMediaError,
    MediaError,
    MediaTimeoutError,
    UnsupportedMediaError,
    normalise_to_wav,
    probe_media,
    sniff_magic,
)

SPOKEN = "Hello there, this is a short test of the upload checks."
LIMIT = 60.0


@pytest.fixture(scope="module")
def spoken_wav(speech) -> Path:
    return speech.say(SPOKEN)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


# ---- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "format_name", "codec", "mime_type"),
    [
        ("wav", "wav", "pcm_s16le", "audio/wav"),
        ("mp3", "mp3", "mp3", "audio/mpeg"),
        ("flac", "flac", "flac", "audio/flac"),
        ("ogg", "ogg", "vorbis", "audio/ogg"),
        ("opus", "ogg", "opus", "audio/ogg"),
        ("m4a", "mp4", "aac", "audio/mp4"),
        ("webm", "matroska", "opus", "audio/webm"),
        ("mka", "matroska", "vorbis", "audio/webm"),
    ],
)
def test_every_allowed_format_is_accepted(speech, fmt, format_name, codec, mime_type):
    path = speech.say(SPOKEN, fmt=fmt)

    result = probe_media(path, max_duration_seconds=LIMIT)

    assert (result.format_name, result.codec, result.mime_type) == (format_name, codec, mime_type)
    assert result.channels == 1
    assert result.sample_rate in (16000, 48000)
    assert 3.0 < result.duration_seconds < 4.0


def test_the_file_name_is_ignored(spoken_wav, tmp_path):
    result = probe_media(_copy(spoken_wav, tmp_path / "song.mp3"), max_duration_seconds=LIMIT)

    assert result.format_name == "wav"


def test_silence_is_valid_audio(speech):
    result = probe_media(speech.silence(5), max_duration_seconds=LIMIT)

    assert result.duration_seconds == 5.0


def test_a_video_stream_is_refused_unless_allowed(spoken_wav, tmp_path):
    video = tmp_path / "clip.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=5",
        "-i",
        str(spoken_wav),
        "-shortest",
        "-c:v",
        "mpeg4",
        "-c:a",
        "aac",
        str(video),
    )

    with pytest.raises(UnsupportedMediaError, match="video"):
        probe_media(video, max_duration_seconds=LIMIT)
    result = probe_media(video, max_duration_seconds=LIMIT, allow_video=True)

    assert result.codec == "aac"


def test_cover_art_in_an_mp3_is_accepted(spoken_wav, tmp_path):
    cover = tmp_path / "cover.png"
    _ffmpeg("-f", "lavfi", "-i", "color=red:size=32x32", "-frames:v", "1", str(cover))
    path = tmp_path / "with-cover.mp3"
    _ffmpeg(
        "-i",
        str(spoken_wav),
        "-i",
        str(cover),
        "-map",
        "0",
        "-map",
        "1",
        "-c:a",
        "libmp3lame",
        "-c:v",
        "png",
        "-disposition:v",
        "attached_pic",
        str(path),
    )

    result = probe_media(path, max_duration_seconds=LIMIT)

    assert (result.format_name, result.codec) == ("mp3", "mp3")


# ---- refused by content ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.wav", b"hello, this is plain text and not audio at all\n"),
        ("page.mp3", b"<!doctype html><html><script>alert(1)</script></html>"),
        ("image.wav", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'),
        ("doc.mp3", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"),
        ("archive.wav", b"PK\x03\x04\x14\x00\x00\x00\x08\x00"),
        ("program.mp3", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff"),
        ("movie.wav", b"RIFF\x00\x10\x00\x00AVI LIST\x00\x00\x00\x00"),
        ("aac.mp3", b"\xff\xf1\x50\x80\x02\x1f\xfc" + b"\x00" * 64),
        ("one-byte.wav", b"\x00"),
    ],
)
def test_non_audio_content_is_unsupported(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(UnsupportedMediaError) as caught:
        probe_media(path, max_duration_seconds=LIMIT)

    assert caught.value.status_code == 415
    assert caught.value.code == "unsupported_media_type"
    assert "WAV, MP3, FLAC" in caught.value.message


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")

    with pytest.raises(EmptyMediaError) as caught:
        probe_media(path, max_duration_seconds=LIMIT)

    assert (caught.value.status_code, caught.value.code) == (400, "empty_media")


def test_a_codec_not_allowed_in_its_container_is_refused(spoken_wav, tmp_path):
    path = tmp_path / "mp3-in.mkv"
    _ffmpeg("-i", str(spoken_wav), "-c:a", "libmp3lame", "-f", "matroska", str(path))

    with pytest.raises(UnsupportedMediaError, match="mp3 codec"):
        probe_media(path, max_duration_seconds=LIMIT)


def test_an_mp3_header_followed_by_html_is_refused(tmp_path):
    path = tmp_path / "polyglot.mp3"
    path.write_bytes(b"\xff\xfb\x90\x64" + b"<html><body>" * 200)

    with pytest.raises(MediaError) as caught:
        probe_media(path, max_duration_seconds=LIMIT)

    assert caught.value.status_code in (400, 415)


# ---- playlists and scripts that would open other files or URLs -------------------------------


class _Canary(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\x47" * 188)

    def log_message(self, *args):
        pass


@pytest.fixture
def canary():
    _Canary.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Canary.hits
    server.shutdown()
    server.server_close()


def _hls(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "playlist.mp3"
    path.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{base_url}/segment.ts\n"
        "#EXTINF:10.0,\nfile:///etc/passwd\n"
        "#EXTINF:10.0,\nhttp://169.254.169.254/latest/meta-data/\n#EXT-X-ENDLIST\n"
    )
    return path


def test_an_hls_playlist_is_refused_and_fetches_nothing(tmp_path, canary):
    base_url, hits = canary
    path = _hls(tmp_path, base_url)

    with pytest.raises(UnsupportedMediaError):
        probe_media(path, max_duration_seconds=LIMIT)
    # Past the magic-byte gate, ffprobe itself refuses the HLS demuxer.
    with pytest.raises(UnsupportedMediaError) as caught:
        media._run_probe(path, timeout=10, memory_limit=None)

    assert "not on whitelist" in caught.value.detail
    time.sleep(0.2)
    assert hits == []


def test_an_ffconcat_script_is_refused(tmp_path, spoken_wav):
    path = tmp_path / "list.wav"
    path.write_text(f"ffconcat version 1.0\nfile '{spoken_wav}'\nfile '/etc/passwd'\n")

    with pytest.raises(UnsupportedMediaError):
        probe_media(path, max_duration_seconds=LIMIT)
    with pytest.raises(UnsupportedMediaError) as caught:
        media._run_probe(path, timeout=10, memory_limit=None)

    assert "not on whitelist" in caught.value.detail


# ---- durations are measured, not read from headers -------------------------------------------


def _flac_claiming(src: Path, dst: Path, samples: int) -> Path:
    """Copy a FLAC file, rewriting STREAMINFO's total-samples field."""
    data = bytearray(src.read_bytes())
    assert data[:4] == b"fLaC"
    field = int.from_bytes(data[18:26], "big")  # sample rate, channels, bits, total samples
    field = (field & ~((1 << 36) - 1)) | samples
    data[18:26] = field.to_bytes(8, "big")
    dst.write_bytes(data)
    return dst


def test_a_header_claiming_a_short_duration_is_not_trusted(speech, tmp_path):
    liar = _flac_claiming(speech.silence(120, fmt="flac"), tmp_path / "liar.flac", 16000)
    ffprobe_says = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(liar)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    with pytest.raises(DurationLimitError) as caught:
        probe_media(liar, max_duration_seconds=LIMIT)

    assert float(ffprobe_says) == 1.0
    assert (caught.value.status_code, caught.value.code) == (413, "duration_limit_exceeded")
    assert "1 min" in caught.value.message


def test_a_header_claiming_a_huge_length_reports_the_real_duration(spoken_wav, tmp_path):
    data = bytearray(spoken_wav.read_bytes())
    data_chunk = data.index(b"data")
    data[4:8] = (0x7FFFFFF8).to_bytes(4, "little")
    data[data_chunk + 4 : data_chunk + 8] = (0x7FFFFFF0).to_bytes(4, "little")
    path = tmp_path / "huge-header.wav"
    path.write_bytes(data)

    result = probe_media(path, max_duration_seconds=LIMIT)

    assert 3.0 < result.duration_seconds < 4.0


def test_a_long_file_stops_decoding_just_past_the_limit(speech):
    started = time.monotonic()

    with pytest.raises(DurationLimitError):
        probe_media(speech.silence(120, fmt="flac"), max_duration_seconds=10)

    assert time.monotonic() - started < 5.0


def test_a_truncated_mp3_reports_what_decodes(speech, tmp_path):
    mp3 = speech.say(SPOKEN, fmt="mp3")
    truncated = tmp_path / "truncated.mp3"
    truncated.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 3])

    result = probe_media(truncated, max_duration_seconds=LIMIT)

    assert result.header_duration_seconds is not None
    assert result.header_duration_seconds > 3.0
    assert 0.5 < result.duration_seconds < 2.0


def test_an_mp3_cut_inside_its_first_frame_is_refused(speech, tmp_path):
    mp3 = speech.say(SPOKEN, fmt="mp3")
    truncated = tmp_path / "stub.mp3"
    head = mp3.read_bytes()
    start = head.index(b"\xff\xf3") if b"\xff\xf3" in head[:2000] else head.index(b"\xff\xfb")
    truncated.write_bytes(head[start : start + 40])

    with pytest.raises((EmptyMediaError, CorruptMediaError, UnsupportedMediaError)):
        probe_media(truncated, max_duration_seconds=LIMIT)


def test_decoding_is_bounded_in_time(speech):
    with pytest.raises(MediaTimeoutError) as caught:
        probe_media(
            speech.silence(120, fmt="flac"), max_duration_seconds=600, decode_timeout_seconds=0.01
        )

    assert caught.value.code == "media_timeout"


def test_the_memory_limit_applies_to_the_tools(spoken_wav):
    assert shutil.which("prlimit"), "util-linux prlimit is expected on the workers"

    with pytest.raises(CorruptMediaError):
        probe_media(spoken_wav, max_duration_seconds=LIMIT, memory_limit_bytes=8 * 1024 * 1024)


# ---- conversion for the engines ---------------------------------------------------------------


def test_normalise_to_wav_writes_16khz_mono_pcm(speech, tmp_path):
    source = speech.say(SPOKEN, fmt="opus")
    probe = probe_media(source, max_duration_seconds=LIMIT)

    out = normalise_to_wav(source, tmp_path / "out" / "audio.wav", probe=probe)

    result = probe_media(out, max_duration_seconds=LIMIT)
    assert (result.format_name, result.codec, result.sample_rate, result.channels) == (
        "wav",
        "pcm_s16le",
        16000,
        1,
    )
    assert abs(result.duration_seconds - probe.duration_seconds) < 0.1
    assert [p.name for p in out.parent.iterdir()] == ["audio.wav"]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "id3"),
        (b"\xff\xfb\x90\x64", "mp3"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"\x00\x00\x00\x20ftypM4A ", "mp4"),
        (b"\x1a\x45\xdf\xa3\x01", "matroska"),
        (b"#EXTM3U\n", None),
        (b"\xff\xf1\x50\x80", None),
    ],
)
def test_sniff_magic(head, expected):
    assert sniff_magic(head) == expected
