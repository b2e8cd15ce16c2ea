"""Fixtures for the engine, media and format tests. None of them needs Django or a database.

Models load once per test session (session fixtures) and the converted/assembled model files
are kept in ``var/models`` (gitignored) between runs; set ``LEXISCORE_TEST_MODEL_CACHE`` to use
another folder. Nothing here downloads anything: the weights come from the pinned packages.

For a machine without the model packages, espeak-ng or sox (a lent GPU machine, where
``bench/gpu/kit.py`` brings what the GPU tests need; docs/gpu.md):

- ``LEXISCORE_TEST_MODEL_DIR``: a folder with one folder per profile (``tiny.en/model.bin`` and
  its aux files), used instead of the packages; the pinned sha256 is still checked;
- ``LEXISCORE_TEST_SPEECH_DIR``: a folder of clips made earlier by ``SpeechFactory`` (the same
  arguments give the same file names), used and filled instead of a fresh temporary folder. One
  process at a time: clips are written in place.

None of these modules imports Django, so the GPU tests run there with
``python3 -m pytest -p no:django --confcutdir=tests/engines -m gpu tests/engines``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

from tests.speech import SpeechFactory
from workers.engines import get_engine
from workers.engines.base import Engine
from workers.engines.models import ModelFiles, prepare_model

REPO_ROOT = Path(__file__).resolve().parents[2]

# Spoken by espeak-ng; each is detected as its language by the base model with a wide margin
# (probability 0.8 to 0.98 on the development machine).
ENGLISH_TEXT = (
    "Please send the quarterly report to the finance team before Friday. "
    "The meeting has been moved to the large conference room on the second floor."
)
FOREIGN_SPEECH = {
    "fr": (
        "Bonjour à tous. Nous avons une réunion importante demain matin. Merci de venir à l'heure.",
        135,
    ),
    "de": (
        "Wir brauchen mehr Zeit, um das Projekt zu beenden. Können Sie uns diese Woche helfen?",
        135,
    ),
    "es": ("Necesitamos más tiempo para terminar el proyecto. ¿Puede ayudarnos esta semana?", 150),
}


# Short clips for the batching tests, one sentence each.
SENTENCES = [
    "Please send the quarterly report to the finance team before Friday.",
    "The meeting has been moved to the large conference room on the second floor.",
    "Our team finished the migration ahead of schedule.",
    "The weather will be sunny and warm this afternoon.",
]


def normalise(text: str) -> str:
    """Lower-case, punctuation removed, whitespace collapsed: the form WER is computed on."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    """Replaces the root conftest's cache clearing: these tests use no Django cache."""
    yield


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    path = Path(os.environ.get("LEXISCORE_TEST_MODEL_CACHE", REPO_ROOT / "var" / "models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir(profile: str) -> Path | None:
    """``profile``'s folder under ``LEXISCORE_TEST_MODEL_DIR``, or None: the pinned package."""
    folder = os.environ.get("LEXISCORE_TEST_MODEL_DIR")
    return Path(folder) / profile if folder else None


def model_files(profile: str, cache: Path) -> ModelFiles:
    return prepare_model(profile, cache_dir=cache, model_dir=model_dir(profile))


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> SpeechFactory:
    folder = os.environ.get("LEXISCORE_TEST_SPEECH_DIR")
    return SpeechFactory(Path(folder) if folder else tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def english_clip(speech: SpeechFactory) -> Path:
    return speech.say(ENGLISH_TEXT)


@pytest.fixture(scope="session")
def long_clip(speech: SpeechFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 38 s: speech, 25 s of silence, speech. Two 30-second windows without VAD."""
    from tests.speech import concatenate

    first = speech.say("Good morning. This is the first part of the recording.")
    gap = speech.silence(25)
    second = speech.say("And this is the second part, after a long pause.")
    return concatenate([first, gap, second], tmp_path_factory.mktemp("long") / "long.wav")


@pytest.fixture(scope="session")
def clips(speech: SpeechFactory) -> list[Path]:
    """One short clip per sentence of SENTENCES, each with its own lead silence."""
    return [speech.say(text, lead_silence=0.5 * i) for i, text in enumerate(SENTENCES)]


@pytest.fixture(scope="session")
def three_window_clip(
    speech: SpeechFactory, english_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """About 75 s of speech with short pauses: three <= 30 s VAD windows."""
    from tests.speech import concatenate

    gap = speech.silence(0.6)
    parts = [english_clip, gap] * 8
    return concatenate(parts, tmp_path_factory.mktemp("windows") / "three.wav")


def _engine(name: str, profile: str, cache: Path, *, batch_size: int | None = None) -> Engine:
    return get_engine(
        name,
        profile,
        "cpu",
        cache_dir=cache,
        model_dir=model_dir(profile),
        batch_size=batch_size,
        max_engines=8,
    )


@pytest.fixture(scope="session")
def tiny_engine(model_cache_dir: Path) -> Engine:
    return _engine("faster-whisper", "tiny.en", model_cache_dir)


@pytest.fixture(scope="session")
def tiny_batched_engine(model_cache_dir: Path) -> Engine:
    return _engine("faster-whisper", "tiny.en", model_cache_dir, batch_size=8)


@pytest.fixture(scope="session")
def base_engine(model_cache_dir: Path) -> Engine:
    return _engine("faster-whisper", "base", model_cache_dir)


@pytest.fixture(scope="session")
def openai_tiny_engine(model_cache_dir: Path) -> Engine:
    return _engine("openai-whisper", "tiny.en", model_cache_dir)
