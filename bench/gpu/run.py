"""GPU transcription benchmark (issue #7): cross-job batching against the single-file baselines.

For each model profile, word-timestamp setting and number of concurrent jobs it transcribes jobs
of mixed length (espeak-ng speech, deterministic) through one ``BatchScheduler`` driven by one
thread per job, as a ``--pool threads`` worker does, and reports aggregate throughput (audio
seconds per wall second), per-job latency p50/p95 and, with nvidia-smi, GPU memory peak and mean
utilisation. In the same run, on the same audio and model:

* ``bare-batched-32-threads``: faster-whisper's own ``BatchedInferencePipeline`` (one file per
  call), driven by 32 threads;
* ``openai-whisper-single``: openai-whisper, one stream, on the first jobs (``--openai-jobs``);
* WER of the batched and the unbatched faster-whisper engine against the script that was spoken,
  on the first jobs (``--wer-jobs``).

    .venv/bin/python bench/gpu/run.py                                  # GPU, the issue's matrix
    .venv/bin/python bench/gpu/run.py --device cpu --jobs 1,4 --max-seconds 60
    python3 bench/gpu/run.py --kit /tmp/lexiscore-kit ...     # on a lent GPU machine (kit.py)

Writes a JSON summary to bench/results/gpu-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "Please send the quarterly report to the finance team before Friday.",
    "The meeting has been moved to the large conference room on the second floor.",
    "Our team finished the migration ahead of schedule.",
    "The weather will be sunny and warm this afternoon.",
    "We need to review the budget before the end of the month.",
    "Call the customer back and confirm the delivery date.",
]


def sentence_files(folder: Path, kit: Path | None) -> list[Path]:
    """One WAV (16 kHz mono PCM) per sentence: the kit's (made by kit.py prepare), or espeak-ng."""
    if kit is not None:
        return [kit / "kit" / "sentences" / f"sentence-{i}.wav" for i in range(len(SENTENCES))]
    from tests.speech import SpeechFactory

    speech = SpeechFactory(folder / "parts")
    return [speech.say(text) for text in SENTENCES]


def make_jobs(
    count: int, min_s: float, max_s: float, folder: Path, seed: int, kit: Path | None = None
) -> list[tuple[Path, str, float]]:
    """`count` files of random length in [min_s, max_s]: sentences with 0.7 s pauses, joined
    with the standard library (no sox), so they can be made on a machine without audio tools."""
    sentences = []
    for path in sentence_files(folder, kit):
        with wave.open(str(path), "rb") as reader:
            params = reader.getparams()
            sentences.append(reader.readframes(reader.getnframes()))
    rate, width = params.framerate, params.sampwidth * params.nchannels
    pause = b"\x00" * int(0.7 * rate) * width
    rng = random.Random(seed)
    jobs = []
    for index in range(count):
        target = rng.uniform(min_s, max_s)
        frames, words, total = [], [], 0.0
        while total < target or not frames:
            pick = rng.randrange(len(SENTENCES))
            frames += [sentences[pick], pause]
            words.append(SENTENCES[pick])
            total += len(sentences[pick]) / width / rate + 0.7
        path = folder / f"job-{index:03d}.wav"
        with wave.open(str(path), "wb") as writer:
            writer.setparams(params)
            writer.writeframes(b"".join(frames))
        jobs.append((path, " ".join(words), total))
    return jobs


class GpuSampler:
    """nvidia-smi memory.used / utilization.gpu every 0.5 s while running (no-op without it)."""

    def __init__(self) -> None:
        self.smi = shutil.which("nvidia-smi")
        self.memory: list[float] = []
        self.utilisation: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        if self.smi:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self.smi:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self.smi is not None
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(
                    [
                        self.smi,
                        "--query-gpu=memory.used,utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-i=0",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout
                memory, util = (float(v) for v in out.strip().splitlines()[0].split(","))
            except (OSError, subprocess.SubprocessError, ValueError):
                continue
            self.memory.append(memory)
            self.utilisation.append(util)

    def summary(self) -> dict[str, Any]:
        if not self.memory:
            return {"gpu_memory_peak_mb": None, "gpu_utilisation_mean": None}
        return {
            "gpu_memory_peak_mb": max(self.memory),
            "gpu_utilisation_mean": round(statistics.fmean(self.utilisation), 1),
        }


def normalise(text: str) -> str:
    """Lower-cased, punctuation removed, spaces collapsed: the form every WER here is taken on."""
    import jiwer

    clean = jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces()]
    )
    return str(clean(text)).strip()


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def drive(engine: Any, jobs: list[tuple[Path, str, float]], options: Any, threads: int) -> dict:
    """Every job in its own call, `threads` at once; throughput and latency."""
    latencies: list[float] = []
    texts: list[str] = [""] * len(jobs)
    start = time.monotonic()

    def one(index: int) -> None:
        texts[index] = engine.transcribe(jobs[index][0], options).text
        # From the burst's start, as a user who submitted with everyone else sees it.
        latencies.append(time.monotonic() - start)

    with GpuSampler() as sampler, ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(len(jobs))))
    wall = time.monotonic() - start
    audio = sum(job[2] for job in jobs)
    return {
        "jobs": len(jobs),
        "threads": threads,
        "audio_seconds": round(audio, 1),
        "wall_seconds": round(wall, 2),
        "throughput_x": round(audio / wall, 1),
        "latency_p50_s": round(percentile(latencies, 0.5), 2),
        "latency_p95_s": round(percentile(latencies, 0.95), 2),
        **sampler.summary(),
        "_texts": texts,
    }


def scheduler_activity(before: dict, after: dict, wall: float) -> dict[str, Any]:
    """What the scheduler did during one row: batch size, mean windows per batch, the share of
    the wall time its thread spent in the model (near 1: the model is the bound; low: the job
    threads' CPU work is), and out-of-memory halvings."""
    batches = after["batches"] - before["batches"]
    windows = after["windows"] - before["windows"]
    model_s = (after["model_ms"] - before["model_ms"]) / 1000
    return {
        "batch_size": after["batch_size"],
        "mean_windows_per_batch": round(windows / batches, 1) if batches else None,
        "model_busy_share": round(model_s / wall, 2) if wall else None,
        "out_of_memory": after["out_of_memory"] - before["out_of_memory"],
        # What ran, not what was asked: 0 if the preparation processes could not start.
        "prepare_processes_running": after["prepare_processes"],
        "prepare_vad": after["prepare_vad"],
        "max_batches_in_flight": after["max_batches_in_flight"],
    }


def describe_machine(device: str) -> dict[str, Any]:
    """CPU count, platform, load, and on CUDA the GPU and CTranslate2's view of it."""
    machine: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    import ctranslate2

    machine["ctranslate2"] = ctranslate2.__version__
    if device == "cuda":
        machine["cuda_devices"] = ctranslate2.get_cuda_device_count()
        machine["compute_types"] = sorted(ctranslate2.get_supported_compute_types("cuda"))
        smi = shutil.which("nvidia-smi")
        if smi:
            machine["gpu"] = subprocess.run(
                [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
    return machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--profiles", default="tiny.en,base")
    parser.add_argument("--jobs", default="1,8,32,100")
    parser.add_argument("--min-seconds", type=float, default=10)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--word-timestamps", default="on,off")
    parser.add_argument("--batch-size", type=int, default=0, help="0: automatic")
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument(
        "--prepare-processes",
        type=int,
        default=0,
        help="cross-job batching: processes for decoding, VAD and features (0: job threads)",
    )
    parser.add_argument(
        "--model-streams",
        type=int,
        default=1,
        help="cross-job batching: scheduler threads running batches at once on the model",
    )
    parser.add_argument(
        "--vad-engine",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="the preparation processes' VAD (WHISPER_VAD_ENGINE)",
    )
    parser.add_argument("--vad-device", default="cpu", help="WHISPER_VAD_DEVICE: cpu or cuda")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="do not start every preparation process before the first burst (the GPU worker "
        "does, WHISPER_PRELOAD_PROFILES; without it the first burst spawns them)",
    )
    parser.add_argument(
        "--warm-model",
        default="auto",
        choices=["auto", "on", "off"],
        help="run BatchScheduler.warm_model before the first burst, as the worker's preload "
        "does (auto: on CUDA; off: the first burst pays what it saves); none with --cold",
    )
    parser.add_argument("--baseline-threads", type=int, default=32)
    parser.add_argument(
        "--bare-jobs",
        type=int,
        default=-1,
        help="jobs for the bare-pipeline baseline (-1: the largest --jobs; 0: skip it)",
    )
    parser.add_argument("--baseline-batch-size", type=int, default=16)
    parser.add_argument(
        "--baseline-workers",
        type=int,
        default=16,
        help="CTranslate2 num_workers of the bare baseline (8-16 gave its best in FACTS.md)",
    )
    parser.add_argument("--openai-jobs", type=int, default=2)
    parser.add_argument("--wer-jobs", type=int, default=4)
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out",
        default=str(ROOT / "bench" / "results"),
        help="folder of the JSON summary, rewritten after every row (a cut-off run keeps its rows)",
    )
    parser.add_argument(
        "--kit",
        help="a folder installed by bench/gpu/kit.py (models and sentences on a machine without "
        "the model packages, espeak-ng or sox)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from workers.engines import get_engine
    from workers.engines.base import TranscriptionOptions

    machine = describe_machine(args.device)
    print(json.dumps({"machine": machine}), flush=True)
    out = Path(args.out) / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "var" / "models"
    job_counts = [int(n) for n in args.jobs.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="lexiscore-bench-gpu-"))
    kit = Path(args.kit) if args.kit else None
    all_jobs = make_jobs(
        max(job_counts), args.min_seconds, args.max_seconds, folder, args.seed, kit
    )

    rows: list[dict[str, Any]] = []
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "command": " ".join(sys.argv),
        "rows": rows,
    }

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(summary, indent=2))

    for profile in args.profiles.split(","):
        common = {"cache_dir": cache, "cpu_threads": args.cpu_threads, "max_engines": 8}
        if kit is not None:  # the kit's copy of the model (checked against the pinned sha256)
            common["model_dir"] = kit / "kit" / "models" / profile
        scheduler = get_engine(
            "faster-whisper",
            profile,
            args.device,
            batch_size=args.batch_size or None,
            cross_job_batching=True,
            max_wait_ms=args.max_wait_ms,
            prepare_processes=args.prepare_processes,
            model_streams=args.model_streams,
            vad_engine=args.vad_engine,
            vad_device=args.vad_device,
            **common,
        )
        if not args.cold and scheduler._preparation is not None:
            # As the worker's preload does (workers/preload.py), and then wait for the processes
            # to be ready, which the worker does not (it has time before jobs come).
            started = time.monotonic()
            ready = scheduler._preparation.wait_ready()
            summary[f"{profile}_prepare_processes_ready"] = ready
            summary[f"{profile}_prepare_ready_seconds"] = round(time.monotonic() - started, 1)
            print(f"{profile}: {ready} preparation processes ready", flush=True)
        if not args.cold and (
            args.warm_model == "on" or (args.warm_model == "auto" and args.device == "cuda")
        ):
            started = time.monotonic()
            summary[f"{profile}_model_warmed"] = scheduler.warm_model()
            summary[f"{profile}_warm_model_seconds"] = round(time.monotonic() - started, 1)
            print(f"{profile}: model warmed in {summary[f'{profile}_warm_model_seconds']} s")
        bare = get_engine(
            "faster-whisper",
            profile,
            args.device,
            batch_size=args.baseline_batch_size,
            num_workers=args.baseline_workers,
            **common,
        )
        unbatched = get_engine("faster-whisper", profile, args.device, **common)
        language = "en"
        for wt in args.word_timestamps.split(","):
            options = TranscriptionOptions(language=language, word_timestamps=wt == "on")
            base_row = {
                "profile": profile,
                "word_timestamps": wt,
                "device": args.device,
                "prepare_processes": args.prepare_processes,
                "vad_device": args.vad_device,
                "model_streams": args.model_streams,
            }
            plain: dict[int, str] = {}  # the unbatched engine's transcript of job i, once

            for count in job_counts:
                jobs = all_jobs[:count]
                before = scheduler.stats()
                result = drive(scheduler, jobs, options, threads=count)
                texts = result.pop("_texts")
                row = {
                    **base_row,
                    "mode": "cross-job-batching",
                    **result,
                    **scheduler_activity(before, scheduler.stats(), result["wall_seconds"]),
                }
                k = min(args.wer_jobs, count)
                if k:
                    batched_wer = statistics.fmean(
                        word_error_rate(jobs[i][1], texts[i]) for i in range(k)
                    )
                    for i in range(k):
                        if i not in plain:
                            plain[i] = unbatched.transcribe(jobs[i][0], options).text
                    plain_wer = statistics.fmean(
                        word_error_rate(jobs[i][1], plain[i]) for i in range(k)
                    )
                    row["wer_batched"] = round(batched_wer, 4)
                    row["wer_unbatched"] = round(plain_wer, 4)
                record(row)
            # openai-whisper first: it is short, and a run cut off by its limit keeps it.
            if args.openai_jobs:
                openai = get_engine("openai-whisper", profile, args.device, **common)
                result = drive(openai, all_jobs[: args.openai_jobs], options, threads=1)
                result.pop("_texts")
                record({**base_row, "mode": "openai-whisper-single", **result})
            bare_jobs = max(job_counts) if args.bare_jobs < 0 else args.bare_jobs
            if bare_jobs:
                jobs = all_jobs[:bare_jobs]
                threads = min(args.baseline_threads, len(jobs))
                result = drive(bare, jobs, options, threads=threads)
                result.pop("_texts")
                record({**base_row, "mode": f"bare-batched-{threads}-threads", **result})

    print(
        f"\n{'profile':8} {'wt':3} {'mode':28} {'jobs':>4} {'audio s':>8} {'x rt':>7} "
        f"{'p50 s':>6} {'p95 s':>6} {'WER b/u':>12} {'GPU MB':>7} {'util':>5}"
    )
    for r in rows:
        wers = (
            f"{r.get('wer_batched', '')}/{r.get('wer_unbatched', '')}" if "wer_batched" in r else ""
        )
        print(
            f"{r['profile']:8} {r['word_timestamps']:3} {r['mode']:28} {r['jobs']:>4} "
            f"{r['audio_seconds']:>8} {r['throughput_x']:>7} {r['latency_p50_s']:>6} "
            f"{r['latency_p95_s']:>6} {wers:>12} {r['gpu_memory_peak_mb'] or '-':>7} "
            f"{r['gpu_utilisation_mean'] or '-':>5}"
        )
    print(f"\nsummary: {out}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
