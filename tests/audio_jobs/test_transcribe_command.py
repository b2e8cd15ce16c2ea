"""`manage.py transcribe FILE`: the worker's validation, profile choice and engine."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import CommandError, call_command

from workers.engines.base import Segment, TranscriptionResult, Word

SPOKEN = "Hello there, this is a short test."
SRT_TIMING = re.compile(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$")


def transcribe(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("transcribe", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


class FakeEngine:
    """Returns a fixed result at once, and records what it was asked."""

    name = "fake"

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.calls: list[tuple[Path, object]] = []

    def transcribe(self, audio_path, options, progress_callback=None, should_cancel=None):
        self.calls.append((Path(audio_path), options))
        words = [Word(0.5, 0.9, " Hello", 0.99), Word(0.9, 1.4, " there.", 0.98)]
        return TranscriptionResult(
            text="Hello there.",
            language=options.language or "fr",
            language_probability=0.97,
            duration=2.7,
            segments=[Segment(0, 0.5, 1.4, " Hello there.", -0.2, 0.01, words)],
        )


@pytest.fixture
def fake_engine():
    engines: list[FakeEngine] = []

    def load(name, profile, **kwargs):
        engines.append(FakeEngine(profile))
        return engines[-1]

    with mock.patch("workers.engines.get_engine", side_effect=load) as get_engine:
        yield get_engine, engines


@pytest.fixture(scope="module")
def clip(speech) -> Path:
    return speech.say(SPOKEN, fmt="mp3")


@pytest.mark.slow
def test_a_short_english_clip_is_transcribed_by_tiny_en_as_srt(clip):
    out, err = transcribe(str(clip), "--model", "tiny.en", "--language", "en", "--format", "srt")

    lines = out.splitlines()
    assert lines[0] == "1"
    assert SRT_TIMING.match(lines[1]), lines[1]
    start, end = (s.replace(",", ".") for s in lines[1].split(" --> "))
    assert start < end <= "00:00:02.800"
    text = " ".join(lines[2:]).lower()
    assert "hello there" in text
    assert "test" in text
    assert "faster-whisper with tiny.en" in err
    assert "mp3/mp3, 2.7 s" in err


@pytest.mark.slow
def test_silence_of_unknown_language_says_no_language_was_heard(speech):
    out, err = transcribe(str(speech.silence(6)), "--format", "txt")

    assert out == ""
    assert "faster-whisper with base" in err
    assert err.rstrip().endswith("; no speech, so no language.")


def test_the_profile_and_engine_settings_are_the_workers(fake_engine, clip, settings):
    get_engine, engines = fake_engine
    settings.WHISPER_CPU_THREADS = 3
    settings.WHISPER_MODEL_DIRS = {"base": "/srv/models/base"}

    out, _ = transcribe(str(clip), "--format", "txt", "--engine", "openai-whisper")

    get_engine.assert_called_once_with(
        "openai-whisper",
        "base",  # no language given: never the English-only model
        device=settings.WHISPER_DEVICE,
        cache_dir=settings.WHISPER_MODEL_CACHE_DIR,
        model_dir="/srv/models/base",
        cpu_threads=3,
        batch_size=None,
        cross_job_batching=False,
        max_wait_ms=settings.WHISPER_BATCH_MAX_WAIT_MS,
        prepare_processes=settings.WHISPER_PREPARE_PROCESSES,
        model_streams=settings.WHISPER_MODEL_STREAMS,
        vad_engine=settings.WHISPER_VAD_ENGINE,
        vad_device=settings.WHISPER_VAD_DEVICE,
    )
    path, options = engines[0].calls[0]
    assert path == clip
    assert (options.language, options.task, options.word_timestamps) == (None, "transcribe", True)
    assert out == "Hello there.\n"


@pytest.mark.parametrize(
    ("args", "profile", "language"),
    [
        (["--language", "en"], "tiny.en", "en"),
        (["--language", "EN-gb"], "tiny.en", "en"),
        (["--language", "fr"], "base", "fr"),
        (["--model", "base", "--language", "en"], "base", "en"),
    ],
)
def test_the_profile_follows_the_language(fake_engine, clip, args, profile, language):
    get_engine, engines = fake_engine

    transcribe(str(clip), *args)

    assert get_engine.call_args.args == ("faster-whisper", profile)
    assert engines[0].calls[0][1].language == language


def test_every_output_format_is_rendered(fake_engine, clip):
    vtt, _ = transcribe(str(clip), "--format", "vtt")
    json_out, _ = transcribe(str(clip), "--format", "json")

    assert vtt == "WEBVTT\n\n00:00:00.500 --> 00:00:01.400\nHello there.\n"
    assert '"words": [' in json_out and '"word": "Hello"' in json_out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "tiny.en"], "is English-only and cannot detect the language"),
        (["--model", "tiny.en", "--language", "fr"], "cannot transcribe 'fr' audio"),
        (["--language", "klingon"], "Language 'klingon' is not supported"),
    ],
)
def test_a_model_and_language_that_do_not_fit_are_refused(fake_engine, clip, args, message):
    get_engine, _ = fake_engine

    with pytest.raises(CommandError, match=message):
        transcribe(str(clip), *args)

    get_engine.assert_not_called()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The file is empty."),
        (b"<html><body>not audio</body></html>", "This file is not a supported audio file."),
        (b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "This file is not a supported audio file."),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00garbage" * 3, "could not be read as audio"),
    ],
    ids=["empty", "html", "playlist", "corrupt"],
)
def test_a_bad_file_is_refused_with_a_clear_message(fake_engine, tmp_path, content, message):
    get_engine, _ = fake_engine
    path = tmp_path / "bad.mp3"
    path.write_bytes(content)

    with pytest.raises(CommandError, match=re.escape(message)) as refused:
        transcribe(str(path))

    assert str(refused.value).startswith(f"{path}: ")
    get_engine.assert_not_called()


def test_audio_over_the_duration_limit_is_refused(fake_engine, clip, settings):
    settings.AUDIO_MAX_DURATION_SECONDS = 1

    with pytest.raises(CommandError, match="longer than the limit of 1 s"):
        transcribe(str(clip))


def test_a_missing_file_is_refused(fake_engine, tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        transcribe(str(tmp_path / "nowhere.wav"))
    with pytest.raises(CommandError, match="no such file"):
        transcribe(str(tmp_path))


def test_an_engine_failure_becomes_a_command_error(clip):
    from workers.engines.errors import ModelNotFoundError

    with (
        mock.patch(
            "workers.engines.get_engine",
            side_effect=ModelNotFoundError("Model 'base' is not installed in /srv/models."),
        ),
        pytest.raises(CommandError, match="Model 'base' is not installed"),
    ):
        transcribe(str(clip))


def test_diarize_labels_the_speakers_of_the_output(fake_engine, clip):
    out, err = transcribe(str(clip), "--language", "en", "--diarize")

    assert out == "Speaker 1: Hello there.\n"
    assert "1 speaker(s)" in err


@pytest.mark.slow
def test_a_conversation_is_written_as_a_script_with_two_speakers(speech):
    from tests.speech import CONVERSATION

    path, _spans = speech.dialogue(CONVERSATION, fmt="mp3")

    out, err = transcribe(str(path), "--language", "en", "--diarize", "--speakers", "2")

    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines if ":" in line][:4] == [
        "Speaker 1",
        "Speaker 2",
        "Speaker 1",
        "Speaker 2",
    ], out
    assert "2 speaker(s)" in err
