"""Where cross-job batching's time goes (issue #7): the CPU-side preparation and the model alone.

1. **Preparation**: decoding, Silero VAD and log-mel features of every window of ``--jobs``
   jobs by the worker's own code: ``workers.preparation.PreparationPool`` with ``--processes``
   processes running each VAD of ``--vad-engines`` (``torch``, ``onnx``) on ``--vad-device``, fed
   by twice as many job threads; then ``prepare_audio`` and the features in as many threads as
   processes (one Python process, the GIL: ``WHISPER_PREPARE_PROCESSES=0``). Every process is
   started, and its VAD loaded, before the clock starts, and files go longest first, so that the
   rate is the pool's throughput rather than its start-up or the last long file.
2. **Model ceiling**: the scheduler's own ``_decode_batch`` on the prepared windows, batch after
   batch with nothing else running, for each batch size of ``--batch-sizes`` and number of model
   streams of ``--streams`` (that many threads calling at once, CTranslate2 ``num_workers``), word
   timestamps on and off (``--word-timestamps``): the throughput the GPU could give if windows
   were always waiting. ``--configs 32x4,64x2`` measures those batch x streams pairs in that
   order instead. Each row also says how many seconds the streams' threads spent inside the
   model's ``encode``, ``generate`` and ``align`` (summed over threads; the rest of a batch is
   Python around the model). ``CT2_CUDA_CACHING_ALLOCATOR_CONFIG`` in the environment changes
   CTranslate2's allocator.

    python3 bench/gpu/ceiling.py --kit /tmp/lexiscore-kit --out $OUT     # on a lent GPU machine
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, GpuSampler, make_jobs

if TYPE_CHECKING:
    from workers.preparation import PreparedAudio


class TimedModel:
    """Stands in for a ``ctranslate2.models.Whisper``, adding up the seconds its threads spend in
    ``encode``, ``generate`` and ``align`` (summed over streams); what a batch costs besides them
    is Python around the model (splitting segments, decoding tokens, word timings)."""

    TIMED = ("encode", "generate", "align", "detect_language")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(self.TIMED, 0.0)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self.TIMED:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.monotonic() - started

        return timed

    def take(self) -> dict[str, float]:
        with self._lock:
            taken = {f"{k}_s": round(v, 2) for k, v in self.seconds.items() if v}
            self.seconds = dict.fromkeys(self.TIMED, 0.0)
        return taken


def prepare_in_threads(path: str, feature_kwargs: dict[str, Any]) -> PreparedAudio:
    """What a job thread does without preparation processes (VAD: faster-whisper's own)."""
    from workers.preparation import prepare_for_batching

    return prepare_for_batching(path, True, feature_kwargs, max_windows=10_000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit")
    parser.add_argument("--profile", default="tiny.en")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--vad-engines", default="torch,onnx")
    parser.add_argument("--vad-device", default="cpu")
    parser.add_argument("--skip-model", action="store_true", help="preparation only")
    parser.add_argument(
        "--skip-threads", action="store_true", help="no preparation in threads (saves time)"
    )
    parser.add_argument("--batch-sizes", default="16,32,64")
    parser.add_argument("--streams", default="1,2")
    parser.add_argument(
        "--configs",
        help="BATCHxSTREAMS,... measured in this order instead of --batch-sizes x --streams",
    )
    parser.add_argument(
        "--word-timestamps", default="off,on", help="model-only rows: off, on or off,on"
    )
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

    from workers.preparation import PreparationPool

    # Longest first: with a few dozen jobs of 10 s to 10 min, a long file started last would leave
    # the other processes idle and measure its length, not the pool's throughput.
    paths = [str(job[0]) for job in sorted(jobs, key=lambda job: -job[2])]
    feature_kwargs = {"feature_size": 128 if args.profile.startswith("large-v3") else 80}

    def measure(kind: str, run: Any, **extra: Any) -> list[PreparedAudio]:
        started = time.monotonic()
        prepared = run()
        wall = time.monotonic() - started
        record(
            {
                "step": f"prepare-{args.processes}-{kind}",
                **extra,
                "audio_seconds": round(audio, 1),
                "windows": sum(len(p.metadata) for p in prepared),
                "wall_seconds": round(wall, 2),
                "throughput_x": round(audio / wall, 1),
            }
        )
        return prepared

    for engine_name in args.vad_engines.split(","):
        pool = PreparationPool(args.processes, vad_engine=engine_name, vad_device=args.vad_device)
        prepare_one = functools.partial(pool.prepare, vad=True, feature_kwargs=feature_kwargs)
        try:
            pool.check()
            # Start every process (and load its VAD) before the clock starts.
            with ThreadPoolExecutor(max_workers=args.processes) as threads:
                list(threads.map(prepare_one, paths[: args.processes]))
            with ThreadPoolExecutor(max_workers=2 * args.processes) as threads:
                prepared = measure(
                    "processes",
                    functools.partial(lambda t, f: list(t.map(f, paths)), threads, prepare_one),
                    vad=pool.vad_in_use,
                    vad_device=args.vad_device,
                )
        finally:
            pool.close()
    with ThreadPoolExecutor(max_workers=args.processes) as threads:
        if not args.skip_threads:
            measure(
                "threads",
                lambda: list(threads.map(lambda p: prepare_in_threads(p, feature_kwargs), paths)),
                vad="onnx",
            )
    if args.skip_model:
        return 0
    windows = [
        (features, meta)
        for job in prepared
        for features, meta in zip(job.features or [], job.metadata, strict=True)
    ]
    common: dict[str, Any] = {"cache_dir": ROOT / "var" / "models"}
    if kit is not None:
        common["model_dir"] = kit / "kit" / "models" / args.profile
    if args.configs:  # in the order given: the likeliest best first, for a run cut off early
        configs = [tuple(int(n) for n in c.split("x")) for c in args.configs.split(",")]
    else:
        sizes = [int(n) for n in args.batch_sizes.split(",")]
        streams_list = [int(n) for n in args.streams.split(",")]
        configs = [(size, streams) for streams, size in itertools.product(streams_list, sizes)]
    for size, streams in configs:
        engine = get_engine(
            "faster-whisper", args.profile, args.device, batch_size=size,
            cross_job_batching=True, model_streams=streams, **common,
        )  # fmt: skip
        timed = TimedModel(engine._model.model)
        engine._model.model = timed
        for wt in (w == "on" for w in args.word_timestamps.split(",")):
            key = BatchKey("en", "transcribe", 5, wt, None)
            job = _Job(key=key, cond=threading.Condition())
            items = [_Item(job, i, f, m, 0.0) for i, (f, m) in enumerate(windows)]
            batches = [items[start : start + size] for start in range(0, len(items), size)]
            with ThreadPoolExecutor(max_workers=streams) as pool:
                list(pool.map(engine._decode_batch, batches[:streams]))  # warm-up
                timed.take()
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
                    "model_seconds": timed.take(),
                }
            )
        engine._model.model = timed._inner
        engine.close()
        clear_engine_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
