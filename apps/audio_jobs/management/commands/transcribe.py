"""Transcribe one local file with the worker's pipeline and print the result (for operators).

The file is validated with the upload probe (`services.probe_audio`: content sniffed, decoded
duration measured and capped, no playlists or references followed), the model profile is chosen
as for a job (an English-only model only when the language is given as English), and the engine
is loaded with the worker's settings. The rendered transcript goes to stdout; what happens along
the way goes to stderr, so the output can be redirected to a file.

    manage.py transcribe meeting.mp3 --language en --format srt > meeting.srt
    manage.py transcribe interview.mp3 --diarize --speakers 2 > interview.txt

``--diarize`` labels the speakers as a job's `diarize` does (workers/engines/speakers.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audio_jobs import formats, media, services
from apps.audio_jobs.processing import engine_from_settings, label_speakers
from workers.engines import ENGINE_NAMES, EngineError, TranscriptionOptions
from workers.engines.models import PROFILES, choose_profile


class Command(BaseCommand):
    help = "Transcribe an audio file with the platform's pipeline and print the transcript."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Audio file (wav, mp3, flac, ogg, m4a, webm).")
        parser.add_argument(
            "--model",
            choices=list(PROFILES),
            help="Model profile (default: tiny.en when --language is en, else base).",
        )
        parser.add_argument(
            "--language", default="", help="Language code such as en or fr (default: detect)."
        )
        parser.add_argument(
            "--format", dest="output_format", choices=list(formats.FORMATS), default="txt"
        )
        parser.add_argument(
            "--engine",
            choices=ENGINE_NAMES,
            help="Whisper engine (default: the WHISPER_ENGINE setting).",
        )
        parser.add_argument(
            "--task",
            choices=("transcribe", "translate"),
            default="transcribe",
            help="translate: English text from speech in another language.",
        )
        parser.add_argument(
            "--hotwords",
            default="",
            help='Names and terms the audio holds, comma-separated ("Siobhan Ngata, Qarlon").',
        )
        parser.add_argument(
            "--diarize", action="store_true", help="Label who spoke (Speaker 1, Speaker 2...)."
        )
        parser.add_argument(
            "--speakers",
            type=int,
            choices=range(1, settings.DIARIZATION_MAX_SPEAKERS + 1),
            metavar="N",
            help="With --diarize: the number of speakers, when known.",
        )

    def handle(self, *args, **options) -> None:
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"{path}: no such file.")
        try:
            probe = services.probe_audio(path)
        except media.MediaError as exc:
            raise CommandError(f"{path}: {exc.message}") from exc
        except media.MediaToolError as exc:
            raise CommandError(str(exc)) from exc

        engine_name = options["engine"] or settings.WHISPER_ENGINE
        try:
            profile = choose_profile(
                options["language"] or None,
                options["model"],
                english_profile=settings.WHISPER_DEFAULT_PROFILE,
            )
            try:
                transcription = TranscriptionOptions(
                    language=options["language"] or None,
                    task=options["task"],
                    hotwords=options["hotwords"] or None,
                )
            except ValueError as exc:  # an option out of range (--hotwords too long)
                raise CommandError(str(exc)) from exc
            self.stderr.write(
                f"{path.name}: {probe.format_name}/{probe.codec}, {probe.duration_seconds:.1f} s; "
                f"{engine_name} with {profile} on {settings.WHISPER_DEVICE}"
            )
            started = time.monotonic()
            engine = engine_from_settings(engine_name, profile)
            result = engine.transcribe(path, transcription)
        except EngineError as exc:
            raise CommandError(exc.message) from exc
        language = (
            f"language {result.language} ({result.language_probability:.2f})"
            if result.language
            else "no speech, so no language"
        )
        self.stderr.write(f"Done in {time.monotonic() - started:.1f} s; {language}.")
        data = result.to_dict()
        if options["diarize"]:
            self._diarize(path, data, options["speakers"])
        body, _media_type, _extension = formats.render_transcript(
            data, options["output_format"], pretty=True
        )
        self.stdout.write(body, ending="")

    def _diarize(self, path: Path, data: dict, expected: int | None) -> None:
        from workers.engines.speakers import DiarizationError

        started = time.monotonic()
        try:
            summary, _found = label_speakers(path, data, speakers_expected=expected)
        except (EngineError, DiarizationError) as exc:
            raise CommandError(f"Speakers could not be labelled: {exc}") from exc
        self.stderr.write(
            f"{len(summary)} speaker(s) in {time.monotonic() - started:.1f} s: "
            + ", ".join(f"{item['id']} {item['seconds']:.0f} s" for item in summary)
        )
