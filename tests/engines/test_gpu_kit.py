"""bench/gpu: the kit that carries the benchmark to a lent GPU machine in chunks under the carry
limit, and the jobs it builds there from the kit's sentences without audio tools."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import wave
from pathlib import Path

import pytest

from workers.engines.audio import duration_of, load_audio

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_gpu_{name}", ROOT / "bench/gpu" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kit = load("kit.py")
run = load("run.py")


def received(tmp_path: Path, payload: bytes, chunk_bytes: int) -> tuple[Path, dict]:
    """Split `payload` as `prepare` does, then copy each chunk folder to the target as `receive`
    does, one call at a time."""
    tar = tmp_path / "kit.tar"
    tar.write_bytes(payload)
    manifest = kit.split(tar, tmp_path / "chunks", chunk_bytes)
    target = tmp_path / "target"
    target.mkdir()
    for folder in sorted((tmp_path / "chunks").iterdir()):
        for path in folder.iterdir():
            shutil.copyfile(path, target / path.name)
    return target, manifest


def test_chunks_rejoin_to_the_same_bytes(tmp_path):
    payload = bytes(range(256)) * 1000  # 256,000 bytes

    target, manifest = received(tmp_path, payload, chunk_bytes=100_000)

    assert manifest["chunks"] == 3
    assert all(
        (tmp_path / "chunks" / f"c{i:02d}" / f"kit.tar.{i:02d}").stat().st_size <= 100_000
        for i in range(3)
    )
    assert kit.join(target).read_bytes() == payload
    assert not list(target.glob("kit.tar.0*"))  # the pieces are gone once joined


def test_a_missing_chunk_is_named(tmp_path):
    target, _ = received(tmp_path, b"x" * 250, chunk_bytes=100)
    (target / "kit.tar.01").unlink()

    with pytest.raises(SystemExit, match=r"missing chunks: \['kit.tar.01'\]"):
        kit.join(target)


def test_a_damaged_chunk_is_refused(tmp_path):
    target, _ = received(tmp_path, b"x" * 250, chunk_bytes=100)
    (target / "kit.tar.02").write_bytes(b"y" * 50)

    with pytest.raises(SystemExit, match="does not match its sha256"):
        kit.join(target)
    assert not (target / "kit.tar").exists()


def test_jobs_are_built_from_the_kit_sentences_with_the_standard_library(tmp_path, speech):
    sentences = tmp_path / "kit" / "kit" / "sentences"
    sentences.mkdir(parents=True)
    for index, text in enumerate(run.SENTENCES):
        shutil.copyfile(speech.say(text), sentences / f"sentence-{index}.wav")
    (sentences / "sentences.json").write_text(json.dumps(run.SENTENCES))

    jobs = run.make_jobs(3, 8, 20, tmp_path, seed=7, kit=tmp_path / "kit")

    assert len(jobs) == 3
    for path, words, seconds in jobs:
        assert 8 <= seconds < 20 + 8  # at least the target, at most one sentence more
        with wave.open(str(path)) as reader:
            assert (reader.getframerate(), reader.getnchannels()) == (16000, 1)
        assert duration_of(load_audio(path)) == pytest.approx(seconds, abs=0.05)
        assert all(sentence in run.SENTENCES for sentence in words.replace(". ", ".|").split("|"))
