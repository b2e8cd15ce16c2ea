"""A kit that takes the GPU benchmark to a lent GPU machine that can fetch nothing.

The lent machines (docs/gpu.md, "Running on a lent GPU machine") run Python 3.12 with PyTorch,
onnxruntime, tokenizers and huggingface_hub, but without CTranslate2, faster-whisper, PyAV,
openai-whisper, jiwer, the models, espeak-ng or sox; each call carries at most 64 MiB. So:

    # here, once
    .venv/bin/python bench/gpu/kit.py prepare              # tiny.en; --profiles tiny.en,base
    # there, one call per chunk folder, while the machine stays warm
    python3 bench/gpu/kit.py receive                       # carry [".gpu-kit/c00"], then c01, ...
    # there, the last call
    python3 bench/gpu/kit.py install && . /tmp/lexiscore-kit/env.sh && python3 bench/gpu/run.py \\
        --kit /tmp/lexiscore-kit --profiles tiny.en --word-timestamps on

`prepare` writes `.gpu-kit/` (ignored by git): the wheels for CPython 3.12 on manylinux x86-64,
the model files (model.bin and its aux files, checked against the pinned sha256 there), the
benchmark's spoken sentences as WAV files, all in one tar split into chunk folders `cNN/` small
enough to travel beside the working tree, plus `manifest.json` (the tar's sha256, the chunk count)
in every chunk. `receive` copies whatever chunks a call carried into /tmp/lexiscore-kit;
`install` checks that every chunk is there, joins them, verifies the sha256, unpacks, installs the
wheels into /tmp/lexiscore-kit/site (no index, no dependencies: the rest is on the machine) and
writes env.sh: PYTHONPATH, and LD_LIBRARY_PATH with `libcublas.so.12`/`libcublasLt.so.12` linked
to the machine's CUDA 13 cuBLAS (CTranslate2's wheels ask for the CUDA 12 names; FACTS.md).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
KIT = ROOT / ".gpu-kit"
TARGET = Path(os.environ.get("LEXISCORE_KIT_DIR", "/tmp/lexiscore-kit"))
MANIFEST = "manifest.json"
TAR = "kit.tar"
# The working tree travels with every chunk: 64 MiB minus the tree (~2 MiB) and a margin.
DEFAULT_CHUNK_MB = 56

# What the lent machine lacks, pinned as in requirements/ (jiwer's rapidfuzz as installed here).
BINARY_WHEELS = [
    "ctranslate2==4.8.5",
    "av==18.1.0",
    "faster-whisper==1.2.1",
    "jiwer==4.0.0",
    "rapidfuzz==3.14.6",
    "more-itertools==11.2.1",
]
# openai-whisper publishes only a source archive: its pure-Python wheel is built here.
SOURCE_WHEELS = ["openai-whisper==20250625"]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def gather_wheels(folder: Path) -> None:
    folder.mkdir(parents=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pip(
        *("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"),
        *("--implementation", "cp", *platforms, "-d", str(folder), *BINARY_WHEELS),
    )
    pip("wheel", "-q", "--no-deps", "-w", str(folder), *SOURCE_WHEELS)


def gather_models(folder: Path, profiles: list[str]) -> None:
    from workers.engines.models import AUX_FILES, prepare_model

    for profile in profiles:
        files = prepare_model(profile, cache_dir=ROOT / "var" / "models")  # verified here
        destination = folder / profile
        destination.mkdir(parents=True)
        for name in ("model.bin", *AUX_FILES):
            shutil.copyfile(files.path / name, destination / name)


def gather_sentences(folder: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import SENTENCES  # bench/gpu/run.py

    from tests.speech import SpeechFactory

    speech = SpeechFactory(folder / "espeak")
    for index, text in enumerate(SENTENCES):
        shutil.copyfile(speech.say(text), folder / f"sentence-{index}.wav")
    (folder / "sentences.json").write_text(json.dumps(SENTENCES, indent=2))
    shutil.rmtree(folder / "espeak")


def gather_test_speech(folder: Path) -> None:
    """The clips the GPU tests' fixtures make with espeak-ng and sox, which the lent machine lacks:
    made here by the CPU tests that use the same fixtures (``LEXISCORE_TEST_SPEECH_DIR``,
    tests/engines/conftest.py), found there under the same names."""
    folder.mkdir(parents=True)
    subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:django", "-p", "no:randomly"),
            *("-p", "no:cacheprovider", "--confcutdir=tests/engines", "-k", "not cuda"),
            "tests/engines/test_silero.py",
        ],
        cwd=ROOT,
        env={**os.environ, "LEXISCORE_TEST_SPEECH_DIR": str(folder)},
        check=True,
    )


def prepare(profiles: list[str], chunk_mb: int, with_tests: bool) -> None:
    shutil.rmtree(KIT, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="lexiscore-kit-") as scratch:
        stage = Path(scratch) / "kit"
        gather_wheels(stage / "wheels")
        gather_models(stage / "models", profiles)
        gather_sentences(stage / "sentences")
        if with_tests:
            gather_test_speech(stage / "speech")
        tar_path = Path(scratch) / TAR
        with tarfile.open(tar_path, "w") as tar:
            tar.add(stage, arcname="kit")
        manifest = split(tar_path, KIT, chunk_mb * 1024 * 1024)
    size, count = manifest["bytes"], manifest["chunks"]
    print(f"{KIT}: {count} chunk folders, {size / 2**20:.0f} MiB in all, profiles {profiles}")
    for index in range(count):
        print(f"  call {index + 1}: carry .gpu-kit/c{index:02d}, command: python3 {rel()} receive")
    print(f"  then: python3 {rel()} install && . {TARGET}/env.sh && python3 bench/gpu/run.py ...")


def split(tar_path: Path, kit: Path, chunk_bytes: int) -> dict:
    """Cut `tar_path` into chunk folders kit/cNN, each with its piece and the manifest."""
    size = tar_path.stat().st_size
    count = max(1, (size + chunk_bytes - 1) // chunk_bytes)
    manifest = {"sha256": sha256_of(tar_path), "bytes": size, "chunks": count}
    with tar_path.open("rb") as handle:
        for index in range(count):
            folder = kit / f"c{index:02d}"
            folder.mkdir(parents=True)
            (folder / f"{TAR}.{index:02d}").write_bytes(handle.read(chunk_bytes))
            (folder / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def join(target: Path) -> Path:
    """The tar rebuilt from the chunks received in `target`, checked against the manifest."""
    manifest = json.loads((target / MANIFEST).read_text())
    parts = [target / f"{TAR}.{index:02d}" for index in range(manifest["chunks"])]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise SystemExit(f"missing chunks: {missing} (run `receive` with each chunk folder)")
    joined = target / TAR
    with joined.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    if sha256_of(joined) != manifest["sha256"]:
        joined.unlink()
        raise SystemExit("the joined kit does not match its sha256: carry the chunks again")
    for part in parts:
        part.unlink()
    return joined


def rel() -> str:
    return str(Path(__file__).resolve().relative_to(ROOT))


def receive() -> None:
    """Copy the chunks this call carried (any .gpu-kit/cNN present) to TARGET."""
    TARGET.mkdir(parents=True, exist_ok=True)
    for folder in sorted(KIT.glob("c[0-9][0-9]")):
        for path in folder.iterdir():
            shutil.copyfile(path, TARGET / path.name)
    have = sorted(p.name for p in TARGET.glob(f"{TAR}.*"))
    manifest = json.loads((TARGET / MANIFEST).read_text()) if (TARGET / MANIFEST).exists() else {}
    print(f"{TARGET}: chunks {have} of {manifest.get('chunks', '?')}")


def cublas_12_links(folder: Path) -> Path | None:
    """A folder with libcublas(Lt).so.12 -> the machine's .so.13 (None if there is none)."""
    patterns = ["/usr/local/cuda*/lib64", "/usr/lib/x86_64-linux-gnu"]
    patterns += [f"{path}/nvidia/cu*/lib" for path in sys.path if path]
    patterns += [f"{path}/nvidia/cublas/lib" for path in sys.path if path]
    found: dict[str, str] = {}
    for pattern in patterns:
        for directory in glob.glob(pattern):
            for name in ("libcublas", "libcublasLt"):
                candidates = sorted(glob.glob(f"{directory}/{name}.so.13*"))
                if candidates and name not in found:
                    found[name] = candidates[0]
    if len(found) < 2:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in found.items():
        link = folder / f"{name}.so.12"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return folder


def install() -> None:
    joined = join(TARGET)
    shutil.rmtree(TARGET / "kit", ignore_errors=True)
    with tarfile.open(joined) as tar:
        tar.extractall(TARGET, filter="data")
    joined.unlink()
    site = TARGET / "site"
    wheels = sorted(str(p) for p in (TARGET / "kit" / "wheels").glob("*.whl"))
    pip(
        *("install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"),
        *("--upgrade", "--target", str(site), *wheels),
    )
    links = cublas_12_links(TARGET / "cuda12")
    env = [f'export PYTHONPATH="{site}:{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"']
    if links is not None:
        env.append(f'export LD_LIBRARY_PATH="{links}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"')
    # What the GPU tests read instead of the model packages, espeak-ng and sox.
    env.append(f'export LEXISCORE_TEST_MODEL_DIR="{TARGET / "kit" / "models"}"')
    env.append(f'export LEXISCORE_TEST_MODEL_CACHE="{TARGET / "cache"}"')
    if (TARGET / "kit" / "speech").is_dir():
        env.append(f'export LEXISCORE_TEST_SPEECH_DIR="{TARGET / "kit" / "speech"}"')
    (TARGET / "env.sh").write_text("\n".join(env) + "\n")
    print(f"installed {len(wheels)} wheels into {site}; cuBLAS 12 names: {links or 'not found'}")
    print(f"models: {sorted(p.name for p in (TARGET / 'kit' / 'models').iterdir())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    make = sub.add_parser("prepare", help="here: build .gpu-kit/")
    make.add_argument("--profiles", default="tiny.en")
    make.add_argument("--chunk-mb", type=int, default=DEFAULT_CHUNK_MB)
    make.add_argument(
        "--with-tests",
        action="store_true",
        help="add the clips the GPU tests need (tests/engines, run there with pytest -m gpu)",
    )
    sub.add_parser("receive", help="there: copy the carried chunks")
    sub.add_parser("install", help="there: join, verify, unpack, install")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.profiles.split(","), args.chunk_mb, args.with_tests)
    elif args.step == "receive":
        receive()
    else:
        install()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
