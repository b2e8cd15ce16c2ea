"""Hotwords: names and terms the model would mishear, given to it in every window's prompt, on
every engine (real tiny.en on espeak-ng speech). Without them tiny.en writes "Shivomangana" for
Siobhan Ngata and "Carlan" for Qarlon; with them it writes the names."""

from __future__ import annotations

import pytest

from tests.engines.conftest import SENTENCES, model_files
from tests.speech import concatenate
from workers.engines.base import MAX_HOTWORDS_CHARS, TranscriptionOptions
from workers.engines.batching import BatchScheduler

pytestmark = pytest.mark.slow

SENTENCE = (
    "Tomorrow I will meet Siobhan Ngata at the Zorvex conference in Llanelli, "
    "and we will discuss the Qarlon roadmap."
)
HOTWORDS = "Siobhan Ngata, Zorvex, Llanelli, Qarlon"
NAMES = ["Siobhan Ngata", "Zorvex", "Llanelli", "Qarlon"]


@pytest.fixture(scope="module")
def names_clip(speech):
    return speech.say(SENTENCE)


@pytest.fixture(scope="module")
def two_windows_of_names(speech, names_clip, tmp_path_factory):
    """The sentence, about 40 s of other speech, the sentence: over 30 s of speech, so the names
    come again in a later window."""
    filler = [speech.say(text) for text in SENTENCES * 2]
    return concatenate(
        [names_clip, *filler, names_clip],
        tmp_path_factory.mktemp("hotwords") / "twice.wav",
    )


def found(text: str) -> list[str]:
    return [name for name in NAMES if name in text]


def test_without_hotwords_tiny_en_mishears_the_names(tiny_engine, names_clip):
    text = tiny_engine.transcribe(names_clip, TranscriptionOptions(language="en")).text

    assert len(found(text)) <= 1  # what the test below fixes is really there


@pytest.mark.parametrize(
    "engine_name", ["tiny_engine", "tiny_batched_engine", "openai_tiny_engine"]
)
def test_hotwords_make_each_engine_write_the_names(request, engine_name, names_clip):
    engine = request.getfixturevalue(engine_name)

    result = engine.transcribe(names_clip, TranscriptionOptions(language="en", hotwords=HOTWORDS))

    assert len(found(result.text)) >= 3, result.text


def test_the_batching_scheduler_keeps_hotwords_in_every_window_and_apart_from_other_jobs(
    model_cache_dir, two_windows_of_names
):
    engine = BatchScheduler(model_files("tiny.en", model_cache_dir), batch_size=4)
    try:
        hinted = engine.transcribe(
            two_windows_of_names, TranscriptionOptions(language="en", hotwords=HOTWORDS)
        )
        plain = engine.transcribe(two_windows_of_names, TranscriptionOptions(language="en"))
    finally:
        engine.close()

    assert hinted.duration > 32  # more speech than one window holds
    # Each name twice: the later window was prompted with them too.
    assert sum(hinted.text.count(name) == 2 for name in NAMES) >= 3, hinted.text
    # Another job's batch key: its windows are decoded without them.
    assert sum(name in plain.text for name in NAMES) <= 1, plain.text


def test_hotwords_are_normalised_and_limited():
    assert TranscriptionOptions(hotwords="  Siobhan \n Ngata ").hotwords == "Siobhan Ngata"
    assert TranscriptionOptions(hotwords="   ").hotwords is None
    with pytest.raises(ValueError, match="hotwords are limited"):
        TranscriptionOptions(hotwords="x" * (MAX_HOTWORDS_CHARS + 1))
