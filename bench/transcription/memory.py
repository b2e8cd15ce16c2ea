"""Peak memory of one CPU transcription, by audio length (docs/deployment.md, "Memory per audio
hour").

    .venv/bin/python bench/transcription/memory.py                       # 9 and 60 min, base
    .venv/bin/python bench/transcription/memory.py --minutes 9,60,240 --profile tiny.en

Each length runs in a fresh process (peak resident memory, `ru_maxrss`, only grows): the
faster-whisper engine as a CPU worker builds it (`WHISPER_BATCH_SIZE` windows per batch, int8,
2 threads) transcribes an espeak-ng recording looped to that length, with English set. By default
the job is cancelled once its first batch is decoded: by then the whole file is decoded, the VAD
has run over all of it and a batch's features exist, which is where the peak is (every later
batch makes the same). `--full` transcribes to the end instead (slow: tens of minutes per audio
hour on 2 cores). Prints one JSON line per length: model-loaded and peak RSS in MB, and the
seconds until the first cancel check after the VAD.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = (
    "The quarterly meeting opened with a review of the budget. Sales rose in the north and fell "
    "slightly in the south, while costs stayed flat. The team agreed to revisit the forecast in "
    "two weeks and to share the minutes with everyone who could not attend."
)


def make_audio(folder: Path, minutes: float) -> Path:
    """An espeak-ng paragraph with a second of silence after it, looped to `minutes`, 16 kHz."""
    speech, padded, looped = folder / "speech.wav", folder / "padded.wav", folder / "long.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), TEXT], check=True)
    subprocess.run(["sox", str(speech), "-r", "16000", "-c", "1", str(padded), "pad", "0", "1"],
                   check=True)  # fmt: skip
    seconds = float(subprocess.run(["soxi", "-D", str(padded)], capture_output=True, text=True,
                                   check=True).stdout)  # fmt: skip
    repeats = max(0, round(minutes * 60 / seconds) - 1)
    subprocess.run(["sox", str(padded), str(looped), "repeat", str(repeats)], check=True)
    return looped


def child(audio: str, profile: str, batch_size: int, full: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from workers.engines.base import TranscriptionOptions
    from workers.engines.errors import TranscriptionCancelled
    from workers.engines.faster import FasterWhisperEngine
    from workers.engines.models import prepare_model

    files = prepare_model(profile, cache_dir=tempfile.mkdtemp(prefix="lexiscore-bench-models-"))
    engine = FasterWhisperEngine(files, batch_size=batch_size, cpu_threads=2)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    checks: list[float] = []
    progressed: list[float] = []

    def cancelled() -> bool:
        # Cancel at the first check after the first batch reported progress.
        checks.append(time.monotonic() - started)
        return not full and bool(progressed)

    with contextlib.suppress(TranscriptionCancelled):
        engine.transcribe(
            audio,
            TranscriptionOptions(language="en"),
            lambda done, _total: progressed.append(done),
            cancelled,
        )
    result = {
        "model_loaded_mb": round(loaded),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "first_check_s": round(checks[0], 1) if checks else None,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="9,60", help="audio lengths, comma-separated")
    parser.add_argument("--profile", default="base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--full", action="store_true", help="transcribe to the end")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.profile, args.batch_size, args.full)
        return
    folder = Path(tempfile.mkdtemp(prefix="lexiscore-bench-audio-"))
    try:
        for minutes in (float(m) for m in args.minutes.split(",")):
            audio = make_audio(folder, minutes)
            command = [sys.executable, __file__, "--child", str(audio)]
            command += ["--profile", args.profile, "--batch-size", str(args.batch_size)]
            command += ["--full"] if args.full else []
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            settings = {"profile": args.profile, "batch_size": args.batch_size, "full": args.full}
            print(json.dumps({"minutes": minutes, **settings, **result}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
