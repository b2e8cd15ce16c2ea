"""Where cross-job batching's time goes (issue #7): the CPU-side preparation and the model alone.

1. **Preparation**: decoding, Silero VAD and log-mel features of every window of ``--jobs``
   jobs, in ``--processes`` processes and then in as many threads (one Python process, the GIL).
2. **Model ceiling**: the scheduler's own ``_decode_batch`` on the prepared windows, batch after
   batch with nothing else running, for each batch size of ``--batch-sizes`` and number of model
   streams of ``--streams`` (that many threads calling at once, CTranslate2 ``num_workers``), word
   timestamps on and off: the throughput the GPU could give if windows were always waiting.
   ``CT2_CUDA_CACHING_ALLOCATOR_CONFIG`` in the environment changes CTranslate2's allocator.

    python3 bench/gpu/ceiling.py --kit /tmp/lexiscore-kit --out $OUT     # on a lent GPU machine
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, GpuSampler, make_jobs

_extractor: Any = None


def prepare(path: str) -> list[tuple[Any, dict]]:
    """One job's windows as the scheduler's job threads make them: features and metadata."""
    global _extractor
    from faster_whisper.audio import decode_audio, pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    if _extractor is None:
        _extractor = FeatureExtractor(feature_size=80)
    audio = decode_audio(path)
    clips = get_speech_timestamps(
        audio, VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)
    )
    chunks, metadata = collect_chunks(audio, clips, max_duration=30)
    return [
        (pad_or_trim(_extractor(chunk)[..., :-1]), meta)
        for chunk, meta in zip(chunks, metadata, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit")
    parser.add_argument("--profile", default="tiny.en")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--batch-sizes", default="16,32,64")
    parser.add_argument("--streams", default="1,2")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    from workers.engines import clear_engine_cache, get_engine
    from workers.engines.batching import BatchKey, _Item, _Job

    folder = Path(tempfile.mkdtemp(prefix="lexiscore-bench-ceiling-"))
    kit = Path(args.kit) if args.kit else None
    jobs = make_jobs(args.jobs, 10, 600, folder, seed=7, kit=kit)
    audio = sum(job[2] for job in jobs)
    out = Path(args.out) / f"gpu-ceiling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": []}

    def record(row: dict[str, Any]) -> None:
        summary["rows"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(summary, indent=2))

    paths = [str(job[0]) for job in jobs]
    for kind, pool_class in (("processes", ProcessPoolExecutor), ("threads", ThreadPoolExecutor)):
        started = time.monotonic()
        with pool_class(max_workers=args.processes) as pool:
            prepared = list(pool.map(prepare, paths))
        wall = time.monotonic() - started
        record(
            {
                "step": f"prepare-{args.processes}-{kind}",
                "audio_seconds": round(audio, 1),
                "windows": sum(len(p) for p in prepared),
                "wall_seconds": round(wall, 2),
                "throughput_x": round(audio / wall, 1),
            }
        )
    windows = [window for job in prepared for window in job]
    common: dict[str, Any] = {"cache_dir": ROOT / "var" / "models"}
    if kit is not None:
        common["model_dir"] = kit / "kit" / "models" / args.profile
    sizes = [int(n) for n in args.batch_sizes.split(",")]
    for streams, size in itertools.product((int(n) for n in args.streams.split(",")), sizes):
        engine = get_engine(
            "faster-whisper", args.profile, args.device, batch_size=size,
            cross_job_batching=True, model_streams=streams, **common,
        )  # fmt: skip
        for wt in (False, True):
            key = BatchKey("en", "transcribe", 5, wt, None)
            job = _Job(key=key, cond=threading.Condition())
            items = [_Item(job, i, f, m, 0.0) for i, (f, m) in enumerate(windows)]
            batches = [items[start : start + size] for start in range(0, len(items), size)]
            with ThreadPoolExecutor(max_workers=streams) as pool:
                list(pool.map(engine._decode_batch, batches[:streams]))  # warm-up
                started = time.monotonic()
                with GpuSampler() as sampler:
                    list(pool.map(engine._decode_batch, batches))
            wall = time.monotonic() - started
            record(
                {
                    "step": "model-only",
                    "batch_size": size,
                    "model_streams": streams,
                    "word_timestamps": wt,
                    "allocator": os.environ.get("CT2_CUDA_CACHING_ALLOCATOR_CONFIG", "default"),
                    "windows": len(items),
                    "wall_seconds": round(wall, 2),
                    "windows_per_second": round(len(items) / wall, 1),
                    "throughput_x": round(audio / wall, 1),
                    **sampler.summary(),
                }
            )
        engine.close()
        clear_engine_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
