"""Fixtures of the audio job tests: generated speech, members, and a real pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apps.accounts.models import Role
from tests.factories import bearer, member
from tests.speech import SpeechFactory

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> SpeechFactory:
    return SpeechFactory(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def tiny_engine():
    """tiny.en on CPU exactly as the engine tests load it (tests/engines/conftest.py): the
    per-process engine cache hands back that model when it is already loaded."""
    from tests.engines import conftest as engine_tests

    cache = Path(
        os.environ.get("LEXISCORE_TEST_MODEL_CACHE", engine_tests.REPO_ROOT / "var" / "models")
    )
    cache.mkdir(parents=True, exist_ok=True)
    return engine_tests._engine("faster-whisper", "tiny.en", cache)


@pytest.fixture
def owner(db):
    return member(Role.OWNER)


@pytest.fixture
def org(owner):
    return owner.organisation


@pytest.fixture
def auth(owner):
    """Headers for the test client: the owner's access token for their organisation."""
    return bearer(owner.user, owner.organisation)


def create_from_clip(organisation, clip: Path):
    """`job_create_from_file` of an English clip with no user: (job, created)."""
    from apps.audio_jobs import services

    return services.job_create_from_file(
        organisation=organisation,
        user=None,
        path=clip,
        original_filename="a.mp3",
        size_bytes=clip.stat().st_size,
        options=services.JobOptions(language="en"),
    )


def media_files(root: str | os.PathLike) -> list[str]:
    """Every stored file under the media root (to prove nothing is left behind)."""
    return sorted(str(path.relative_to(root)) for path in Path(root).rglob("*") if path.is_file())
