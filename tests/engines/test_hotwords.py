"""Hotwords: names and terms the model would mishear, given to it in every window's prompt, on
every engine (real tiny.en on espeak-ng speech). Without them tiny.en writes "Shivomangana" for
Siobhan Ngata and "Carlan" for Qarlon; with them it writes the names."""

from __future__ import annotations

import pytest

from tests.engines.conftest import SENTENCES, model_files
from tests.speech import concatenate
from workers.engines.base import (
    HOTWORDS_MAX_TOKENS,
    MAX_HOTWORDS_CHARS,
    TranscriptionOptions,
    fit_prompt,
)
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


# The worst a request can ask: its names first, then 500 characters of codes in Cyrillic (over
# 300 tokens), and 1000 characters of initial prompt in Cyrillic (over 400 tokens). Untrimmed,
# faster-whisper's prompt outgrew the decoder's 448 positions (the job failed) or left a window
# no room to write.
CODES = ", ".join([HOTWORDS, *(f"ЖЩ-{n:04d}-ЮЯ" for n in range(60))])[:MAX_HOTWORDS_CHARS]
LONG_PROMPT = ("Протокол заседания совета директоров по бюджету. " * 30)[:1000]


@pytest.mark.parametrize("engine_name", ["tiny_engine", "tiny_batched_engine", "base_scheduler"])
def test_the_longest_hotwords_and_prompt_leave_room_for_the_text(
    request, engine_name, names_clip, model_cache_dir
):
    if engine_name == "base_scheduler":  # multilingual, batched: a longer prompt than tiny.en's
        engine = BatchScheduler(model_files("base", model_cache_dir), batch_size=2)
        request.addfinalizer(engine.close)
    else:
        engine = request.getfixturevalue(engine_name)
    options = TranscriptionOptions(language="en", hotwords=CODES, initial_prompt=LONG_PROMPT)

    result = engine.transcribe(names_clip, options)

    assert "discuss" in result.text.lower() and "road" in result.text.lower(), result.text
    # The names came first, so they were kept (unhinted, at most one comes out right).
    assert len(found(result.text)) >= 2, result.text


def test_openai_whisper_carries_the_hotwords_at_the_end_of_a_prompt_that_fits(
    openai_tiny_engine,
):
    from whisper.tokenizer import get_tokenizer

    from workers.engines.openai import CARRIED_PROMPT_TOKENS

    long_prompt = "Minutes of the board meeting on the quarterly budget. " * 18  # 972 characters
    prompt = openai_tiny_engine._prompt(
        TranscriptionOptions(language="en", hotwords=CODES, initial_prompt=long_prompt)
    )
    plain = openai_tiny_engine._prompt(TranscriptionOptions(language="en", initial_prompt="Hi."))

    # openai-whisper keeps the last tokens of what it carries: the hotwords (the job's names
    # first, then what fits of the codes) go after the end of the prompt, and the whole stays
    # short enough that nothing of it is cut.
    before, _, after = prompt.partition(HOTWORDS)
    assert before.rstrip().endswith("quarterly budget.")
    assert after.startswith(", ЖЩ-0000-ЮЯ") or after == ""
    assert len(get_tokenizer(False).encode(" " + prompt)) <= CARRIED_PROMPT_TOKENS
    assert plain == "Hi."


def test_fit_prompt_keeps_whole_terms_in_order_and_the_end_of_the_prompt():
    def encode(text):  # one token per character
        return [ord(c) for c in text]

    def decode(tokens):
        return "".join(chr(t) for t in tokens)

    terms = ["a" * 30, "b" * 40, "c" * 20, "d" * 5]
    hotwords, prompt = fit_prompt(encode, decode, ", ".join(terms), "x" * 300 + " the end")

    assert hotwords == f"{terms[0]}, {terms[2]}, {terms[3]}"  # b did not fit; c and d did
    assert len(encode(" " + hotwords)) <= HOTWORDS_MAX_TOKENS
    assert prompt.endswith("the end")
    assert len(encode(" " + hotwords)) + len(encode(" " + prompt)) <= 223
    assert fit_prompt(encode, decode, None, "short") == (None, "short")
    assert fit_prompt(encode, decode, "x" * 100, None) == (None, None)  # one term, too long
