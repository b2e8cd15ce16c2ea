"""Fixtures of the OpenAI-compatible API tests."""

from __future__ import annotations

import pytest

from apps.accounts import authentication
from apps.openai_compat import waiting
from tests.speech import SpeechFactory

URL = "/api/openai/v1/audio/transcriptions"
TRANSLATIONS_URL = "/api/openai/v1/audio/translations"
ENGLISH = "The quarterly report shows that revenue grew by twelve percent."


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> SpeechFactory:
    return SpeechFactory(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def clip(speech):
    return speech.say(ENGLISH, fmt="mp3")


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with no waiting request and no remembered keys in this process."""
    authentication.over_the_limit.clear()
    authentication.known_keys.clear()
    waiting.SLOTS.taken = 0
    yield
    authentication.over_the_limit.clear()
    authentication.known_keys.clear()
