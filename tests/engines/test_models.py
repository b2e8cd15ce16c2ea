"""Model profiles: offline resolution, assembly of the split base model, sha256 verification,
and the rules for choosing a profile."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.engines.conftest import model_files
from workers.engines import models
from workers.engines.errors import (
    ModelIntegrityError,
    ModelNotFoundError,
    ProfileError,
    UnsupportedLanguageError,
)
from workers.engines.models import (
    AUX_FILES,
    PROFILES,
    ModelFiles,
    check_vocabulary_language,
    choose_profile,
    locate_model,
    model_dir_env_var,
    normalise_language,
    prepare_model,
    vocabulary_languages,
)

BASE_SIZE = 145_217_532


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_tiny_en(dst: Path) -> Path:
    source = locate_model("tiny.en", cache_dir=dst / "cache").path
    shutil.copytree(source, dst / "tiny.en")
    return dst / "tiny.en"


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


# ---- locating -------------------------------------------------------------------------------


def test_locate_tiny_en_finds_the_package_files_without_hashing(tmp_path, monkeypatch):
    def no_hashing(path):
        raise AssertionError("locate_model must not hash")

    monkeypatch.setattr(models, "sha256_file", no_hashing)

    files = locate_model("tiny.en", cache_dir=tmp_path)

    assert files.profile == "tiny.en"
    assert files.english_only is True
    assert files.source == "package"
    assert files.sha256 == PROFILES["tiny.en"].sha256
    assert files.model_bin.is_file()
    assert all((files.path / name).is_file() for name in AUX_FILES)
    assert files.needs_assembly is False


def test_locate_base_before_assembly_reports_it_is_needed(tmp_path):
    files = locate_model("base", cache_dir=tmp_path)

    assert files.english_only is False
    assert files.assembled is True
    assert files.needs_assembly is True
    assert files.path.parent == tmp_path / "ct2"
    assert not files.model_bin.exists()


def test_prepare_base_joins_the_parts_into_a_verified_model_bin(tmp_path):
    files = prepare_model("base", cache_dir=tmp_path)

    assert files.needs_assembly is False
    assert files.model_bin.stat().st_size == BASE_SIZE
    assert _sha256(files.model_bin) == PROFILES["base"].sha256
    assert sorted(p.name for p in files.path.iterdir()) == sorted(["model.bin", *AUX_FILES])
    assert locate_model("base", cache_dir=tmp_path).needs_assembly is False


def test_prepare_base_rebuilds_a_damaged_assembled_copy(tmp_path):
    files = prepare_model("base", cache_dir=tmp_path)
    _flip_byte(files.model_bin, 1_000_000)
    models.clear_hash_cache()

    again = prepare_model("base", cache_dir=tmp_path)

    assert _sha256(again.model_bin) == PROFILES["base"].sha256


def test_a_model_dir_override_is_used_and_verified(tmp_path):
    model_dir = _copy_tiny_en(tmp_path)

    files = prepare_model("tiny.en", cache_dir=tmp_path / "cache", model_dir=model_dir)

    assert files.path == model_dir
    assert files.source == "model_dir"


def test_a_model_dir_with_split_parts_is_assembled_into_the_cache(tmp_path):
    model_dir = tmp_path / "parts"
    model_dir.mkdir()
    source = _copy_tiny_en(tmp_path)
    data = (source / "model.bin").read_bytes()
    (model_dir / "model.bin.part1").write_bytes(data[: len(data) // 2])
    (model_dir / "model.bin.part2").write_bytes(data[len(data) // 2 :])
    for name in AUX_FILES:
        shutil.copy(source / name, model_dir / name)

    files = prepare_model("tiny.en", cache_dir=tmp_path / "cache", model_dir=model_dir)

    assert files.model_bin.read_bytes() == data
    assert files.path.is_relative_to(tmp_path / "cache")


def test_a_tampered_model_raises_model_integrity_error(tmp_path):
    model_dir = _copy_tiny_en(tmp_path)
    _flip_byte(model_dir / "model.bin", 5_000_000)

    with pytest.raises(ModelIntegrityError) as caught:
        prepare_model("tiny.en", cache_dir=tmp_path / "cache", model_dir=model_dir)

    assert str(model_dir / "model.bin") in caught.value.message
    assert PROFILES["tiny.en"].sha256 in caught.value.message
    assert caught.value.code == "model_integrity"


def test_a_tampered_part_leaves_nothing_in_the_cache(tmp_path):
    model_dir = tmp_path / "parts"
    model_dir.mkdir()
    source = _copy_tiny_en(tmp_path)
    data = bytearray((source / "model.bin").read_bytes())
    (model_dir / "model.bin.part1").write_bytes(data[:1000])
    data[5000] ^= 0xFF
    (model_dir / "model.bin.part2").write_bytes(data[1000:])
    for name in AUX_FILES:
        shutil.copy(source / name, model_dir / name)

    with pytest.raises(ModelIntegrityError):
        prepare_model("tiny.en", cache_dir=tmp_path / "cache", model_dir=model_dir)

    assembled = locate_model("tiny.en", cache_dir=tmp_path / "cache", model_dir=model_dir).path
    assert not (assembled / "model.bin").exists()
    assert not list(assembled.glob("*.tmp"))


def test_an_expected_sha256_override_is_enforced(tmp_path):
    model_dir = _copy_tiny_en(tmp_path)

    with pytest.raises(ModelIntegrityError):
        prepare_model("tiny.en", cache_dir=tmp_path, model_dir=model_dir, expected_sha256="0" * 64)


def test_verification_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    model_dir = _copy_tiny_en(tmp_path)
    calls = []
    real = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda path: calls.append(path) or real(path))

    prepare_model("tiny.en", cache_dir=tmp_path, model_dir=model_dir)
    prepare_model("tiny.en", cache_dir=tmp_path, model_dir=model_dir)
    first_count = len(calls)
    stat = (model_dir / "model.bin").stat()
    os.utime(model_dir / "model.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    prepare_model("tiny.en", cache_dir=tmp_path, model_dir=model_dir)

    assert first_count == 1
    assert len(calls) == 2


def test_a_missing_model_dir_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        locate_model("base", cache_dir=tmp_path, model_dir=tmp_path / "nowhere")


def test_a_model_dir_without_tokenizer_raises_model_not_found(tmp_path):
    model_dir = _copy_tiny_en(tmp_path)
    (model_dir / "tokenizer.json").unlink()

    with pytest.raises(ModelNotFoundError, match=r"tokenizer\.json"):
        locate_model("tiny.en", cache_dir=tmp_path, model_dir=model_dir)


def test_an_unknown_profile_is_refused(tmp_path):
    with pytest.raises(ProfileError, match="Unknown model profile 'large'"):
        locate_model("large", cache_dir=tmp_path)


def test_model_dir_env_var_names():
    assert model_dir_env_var("tiny.en") == "LEXISCORE_MODEL_DIR_TINY_EN"
    assert model_dir_env_var("base") == "LEXISCORE_MODEL_DIR_BASE"


# ---- choosing a profile ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "requested", "expected"),
    [
        (None, None, "base"),
        ("", None, "base"),
        ("auto", None, "base"),
        ("fr", None, "base"),
        ("de", "auto", "base"),
        ("en", None, "tiny.en"),
        ("EN", None, "tiny.en"),
        ("en-GB", None, "tiny.en"),
        ("en", "tiny.en", "tiny.en"),
        ("en", "base", "base"),
        (None, "base", "base"),
        ("fr", "base", "base"),
    ],
)
def test_choose_profile(language, requested, expected):
    assert choose_profile(language, requested) == expected


@pytest.mark.parametrize("language", [None, "", "auto", "fr", "de", "es", "zh"])
def test_english_only_model_is_refused_unless_language_is_english(language):
    with pytest.raises(ProfileError, match="English-only"):
        choose_profile(language, "tiny.en")


def test_english_default_can_be_the_multilingual_model():
    assert choose_profile("en", None, english_profile="base") == "base"


def test_multilingual_default_must_not_be_english_only():
    with pytest.raises(ProfileError):
        choose_profile("fr", None, multilingual_profile="tiny.en")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("fr", "fr"), ("pt-BR", "pt"), ("zh_TW", "zh"), ("yue", "yue"), ("jv", "jw"), (None, None)],
)
def test_normalise_language(given, expected):
    assert normalise_language(given) == expected


@pytest.mark.parametrize("given", ["xx", "klingon", "english"])
def test_unknown_languages_are_refused(given):
    with pytest.raises(UnsupportedLanguageError):
        normalise_language(given)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profiles_language_table_is_its_vocabularys(model_cache_dir, profile):
    spec = PROFILES[profile]
    vocabulary = vocabulary_languages(model_files(profile, model_cache_dir))

    if spec.english_only:
        assert spec.languages == {"en"} <= vocabulary
    else:
        assert spec.languages == vocabulary
    # Cantonese is a Whisper code (large-v3) that neither model has a token for.
    assert "yue" in models.WHISPER_LANGUAGES - vocabulary


def test_the_language_table_is_whispers_and_faster_whispers():
    """The names are openai-whisper's (read from its source: importing `whisper` loads torch);
    the codes are faster-whisper's too."""
    import ast
    import importlib.util

    from faster_whisper.tokenizer import _LANGUAGE_CODES

    spec = importlib.util.find_spec("whisper")
    assert spec is not None and spec.submodule_search_locations
    source = (Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py").read_text()
    tree = ast.parse(source)
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "LANGUAGES" for t in node.targets)
    )
    assert ast.literal_eval(table) == models.WHISPER_LANGUAGE_NAMES
    assert frozenset(_LANGUAGE_CODES) == models.WHISPER_LANGUAGES


@pytest.mark.parametrize("requested", [None, "base"])
def test_a_language_missing_from_the_models_vocabulary_is_refused(requested):
    refused = r"not supported by the model 'base'.*use 'zh'"
    with pytest.raises(UnsupportedLanguageError, match=refused):
        choose_profile("yue", requested)
    assert choose_profile("zh", requested) == "base"


def test_the_engines_check_the_vocabulary_of_the_files_they_load(model_cache_dir, tmp_path):
    """An operator's model directory may hold another vocabulary than the profile's table."""
    base = model_files("base", model_cache_dir)
    tokenizer = json.loads((base.path / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] != "<|sw|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    files = ModelFiles("base", tmp_path, base.sha256, english_only=False, source="model_dir")

    with pytest.raises(UnsupportedLanguageError, match="'sw'"):
        check_vocabulary_language(files, "sw")
    check_vocabulary_language(files, "fr")
    check_vocabulary_language(files, None)
