"""Word error rate of cross-job batching, the bare batched pipeline and the unbatched engine on
the benchmark's jobs (issue #7's "WER within 0.5 point of the unbatched engine").

Each engine transcribes the same ``--jobs`` files of ``run.py``'s ``make_jobs`` (seed 7: the
first N of the GPU benchmark's 100) one after another; WER is against the spoken script, after
lower-casing and removing punctuation. Reported per engine: the aggregate WER (errors over all
reference words), the mean of the files' WERs, the same over the first 4 jobs (what ``run.py``
reports), and how many files' transcripts are identical between cross-job batching and the bare
pipeline.

    .venv/bin/python bench/gpu/wer.py --device cpu --jobs 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, make_jobs, normalise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--profile", default="tiny.en")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--word-timestamps", default="on", choices=["on", "off"])
    parser.add_argument("--kit", help="a folder installed by bench/gpu/kit.py")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    import jiwer

    from workers.engines import get_engine
    from workers.engines.base import TranscriptionOptions

    kit = Path(args.kit) if args.kit else None
    jobs = make_jobs(args.jobs, 10, 600, Path(tempfile.mkdtemp(prefix="lexiscore-wer-")), 7, kit)
    common: dict[str, Any] = {"cache_dir": ROOT / "var" / "models", "max_engines": 8}
    if kit is not None:
        common["model_dir"] = kit / "kit" / "models" / args.profile
    engines = {
        "cross-job-batching": get_engine(
            "faster-whisper",
            args.profile,
            args.device,
            batch_size=args.batch_size,
            cross_job_batching=True,
            **common,
        ),
        "bare-batched": get_engine(
            "faster-whisper", args.profile, args.device, batch_size=args.batch_size, **common
        ),
        "unbatched": get_engine("faster-whisper", args.profile, args.device, **common),
    }
    options = TranscriptionOptions(language="en", word_timestamps=args.word_timestamps == "on")
    references = [normalise(job[1]) for job in jobs]
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
        "jobs": len(jobs),
        "audio_seconds": round(sum(job[2] for job in jobs), 1),
        "engines": {},
    }
    texts: dict[str, list[str]] = {}
    for name, engine in engines.items():
        started = time.monotonic()
        texts[name] = [normalise(engine.transcribe(str(job[0]), options).text) for job in jobs]
        per_file = [jiwer.wer(r, h) for r, h in zip(references, texts[name], strict=True)]
        summary["engines"][name] = {
            "aggregate_wer": round(jiwer.wer(references, texts[name]), 4),
            "mean_file_wer": round(statistics.fmean(per_file), 4),
            "first4_mean_wer": round(statistics.fmean(per_file[:4]), 4),
            "seconds": round(time.monotonic() - started, 1),
        }
        print(name, json.dumps(summary["engines"][name]), flush=True)
    summary["identical_batched_and_bare"] = sum(
        a == b for a, b in zip(texts["cross-job-batching"], texts["bare-batched"], strict=True)
    )
    out = Path(args.out) / f"wer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
