"""GPU memory of cross-job batching (issue #7): memory per window, and a real CUDA out-of-memory.

1. **Probe**: for each batch size (``--batch-sizes``), a fresh process loads the batching engine
   with that fixed batch size, transcribes ``--jobs`` jobs at once (enough windows to fill the
   largest batch) and reports GPU memory after loading and at its peak (nvidia-smi; CTranslate2's
   caching allocator keeps what a batch took, so the reading after the run is the peak). A least
   squares line through (batch size, peak) gives the memory one window needs: the number that
   ``GPU_MB_PER_WINDOW`` in workers/engines/batching.py estimates.
2. **Out of memory**: a fresh process takes all but ``model + --oom-windows windows`` of the free
   GPU memory with PyTorch, then runs the same jobs with a batch size of the largest probe. The
   scheduler must meet CUDA's out-of-memory error, halve its batch until one fits and finish every
   job; the report gives the halvings, the final batch size, failed windows and the WER.

    python3 bench/gpu/memory.py --kit /tmp/lexiscore-kit --out $OUT      # on a lent GPU machine

Needs a CUDA device (and PyTorch for the out-of-memory step); no Django.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, GpuSampler, make_jobs, word_error_rate


def used_mb() -> float | None:
    sampler = GpuSampler()
    if not sampler.smi:
        return None
    out = subprocess.run(
        [sampler.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i=0"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    try:
        return float(out.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One process: (optionally) take GPU memory, load the engine, run the jobs, report."""

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hog = None
    taken_mb = 0
    if args.leave_mb is not None:
        import torch

        free, _total = torch.cuda.mem_get_info(0)
        taken_mb = int(free // 2**20) - args.leave_mb
        hog = torch.empty(taken_mb * 2**20, dtype=torch.uint8, device="cuda")
    from workers.engines import get_engine
    from workers.engines.base import TranscriptionOptions

    folder = Path(tempfile.mkdtemp(prefix="lexiscore-bench-mem-"))
    kit = Path(args.kit) if args.kit else None
    jobs = make_jobs(args.jobs, args.min_seconds, args.max_seconds, folder, seed=11, kit=kit)
    before = used_mb()
    common: dict[str, Any] = {"cache_dir": ROOT / "var" / "models"}
    if kit is not None:
        common["model_dir"] = kit / "kit" / "models" / args.profile
    engine = get_engine(
        "faster-whisper",
        args.profile,
        args.device,
        batch_size=args.batch_size,
        cross_job_batching=True,
        max_wait_ms=args.max_wait_ms,
        **common,
    )
    loaded = used_mb()
    options = TranscriptionOptions(language="en", word_timestamps=True)
    errors: list[str] = []

    def one(job: tuple[Path, str, float]) -> str:
        try:
            return engine.transcribe(job[0], options).text
        except Exception as exc:  # a job the scheduler failed: reported, not raised
            errors.append(repr(exc))
            return ""

    started = time.monotonic()
    with GpuSampler() as sampler, ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        texts = list(pool.map(one, jobs))
    wall = time.monotonic() - started
    after = used_mb()
    stats = engine.stats()
    del hog
    return {
        "batch_size_setting": args.batch_size,
        "taken_by_pytorch_mb": taken_mb,
        "used_before_load_mb": before,
        "used_after_load_mb": loaded,
        "used_after_run_mb": after,
        "peak_sampled_mb": sampler.summary()["gpu_memory_peak_mb"],
        "audio_seconds": round(sum(job[2] for job in jobs), 1),
        "wall_seconds": round(wall, 2),
        "failed_jobs": len(errors),
        "errors": errors[:3],
        "wer": round(
            statistics.fmean(
                word_error_rate(job[1], text) for job, text in zip(jobs, texts, strict=True)
            ),
            4,
        ),
        "stats": {
            key: stats[key]
            for key in (
                "batches",
                "windows",
                "out_of_memory",
                "isolation_retries",
                "failed_windows",
                "batch_size",
                "initial_batch_size",
                "batch_sizes",
            )
        },
    }


def spawn(args: argparse.Namespace, batch_size: int, leave_mb: int | None = None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--batch-size",
        str(batch_size),
        "--jobs",
        str(args.jobs),
        "--profile",
        args.profile,
        "--device",
        args.device,
        "--min-seconds",
        str(args.min_seconds),
        "--max-seconds",
        str(args.max_seconds),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    if args.kit:
        command += ["--kit", args.kit]
    if leave_mb is not None:
        command += ["--leave-mb", str(leave_mb)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired as exc:  # one hung child must not lose the other probes
        return {"batch_size_setting": batch_size, "timed_out_after_s": exc.timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"batch_size_setting": batch_size, "returncode": done.returncode,
                "stderr_tail": done.stderr[-2000:]}  # fmt: skip
    result = json.loads(lines[-1])
    # The scheduler's warnings (out-of-memory halvings, batches retried window by window, with
    # the library's error message): what the numbers alone do not say.
    result["warnings"] = [
        line[-400:] for line in done.stderr.splitlines() if "WARNING" in line or "rror" in line
    ][:20]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit")
    parser.add_argument("--profile", default="tiny.en")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--min-seconds", type=float, default=90)
    parser.add_argument("--max-seconds", type=float, default=150)
    parser.add_argument("--max-wait-ms", type=float, default=200)
    parser.add_argument("--oom-windows", type=int, default=4)
    parser.add_argument("--child-timeout", type=int, default=180)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--leave-mb", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0

    out = Path(args.out) / f"gpu-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
        "probes": [],
    }

    def save() -> None:
        out.write_text(json.dumps(summary, indent=2))

    sizes = [int(n) for n in args.batch_sizes.split(",")]
    for size in sizes:
        summary["probes"].append(spawn(args, size))
        print(json.dumps(summary["probes"][-1]), flush=True)
        save()
    points = [
        (p["batch_size_setting"], p["used_after_run_mb"] - p["used_before_load_mb"])
        for p in summary["probes"]
        if p.get("used_after_run_mb") is not None and p.get("used_before_load_mb") is not None
    ]
    if len(points) >= 2:
        slope = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
        model = min(
            p["used_after_load_mb"] - p["used_before_load_mb"]
            for p in summary["probes"]
            if p.get("used_after_load_mb") is not None
        )
        summary["mb_per_window"] = round(slope.slope, 1)
        summary["mb_intercept"] = round(slope.intercept, 1)
        summary["mb_model_and_context"] = model
        print(json.dumps({k: summary[k] for k in ("mb_per_window", "mb_intercept")}), flush=True)
        save()
        if args.device == "cuda":
            leave = int(model + args.oom_windows * max(slope.slope, 1))
            summary["oom"] = spawn(args, max(sizes), leave_mb=leave)
            summary["oom"]["left_free_mb"] = leave
            print(json.dumps({"oom": summary["oom"]}), flush=True)
            save()
    print(f"summary: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
