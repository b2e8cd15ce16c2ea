"""Transcription pipeline benchmark (issue #4), in one run.

    .venv/bin/python bench/transcription/run.py
    .venv/bin/python bench/transcription/run.py --skip-openai --jobs 20

(a) The bare faster-whisper engine (tiny.en, beam 5, word timestamps, through
    workers.engines.get_engine) against the whole pipeline on the same 5-minute espeak file:
    POST /api/v1/jobs to gunicorn, validation, storage, queueing on a throwaway Redis, a real
    Celery worker (prefork, concurrency 1), results saved, until GET shows `completed`.
    Overhead = pipeline wall time / engine time - 1. Each is run twice, alternating.
(b) The same file through the openai-whisper engine (same model, beam and options), between two
    faster-whisper runs (so both see the same load on a shared machine): ratio.
(c) JOBS short clips of mixed length (3-25 s) submitted at once; waits until every job is
    final, checks none was lost or failed, and samples the worker's pool-child RSS throughout.

Uses a scratch PostgreSQL database (dropped at the end), a private redis-server on a free port,
gunicorn and the worker with lexiscore.settings.production and generated secrets. Loopback only,
every wait bounded. Summary JSON and logs go to bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PY = sys.executable

SENTENCES = [
    "The committee met on Tuesday morning to review the budget for the coming year.",
    "Several members asked whether the new library could open before the winter holidays.",
    "The treasurer explained that construction costs had risen by almost twelve percent.",
    "After a short break, the discussion turned to the problem of parking near the station.",
    "A local teacher suggested that students could help design the garden behind the school.",
    "Everyone agreed that the river path needs better lighting and a few more benches.",
    "The chair thanked the volunteers who cleaned the park after the summer festival.",
    "Questions from the public focused on bus timetables and the price of monthly passes.",
    "The engineer described how the bridge will be repaired without closing it to traffic.",
    "Finally, the meeting approved the minutes and set the next date for early March.",
]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def make_audio(workdir: Path, long_seconds: float) -> tuple[Path, list[Path]]:
    from tests.speech import SpeechFactory, concatenate

    speech = SpeechFactory(workdir / "speech")
    # About 5 minutes: espeak speaks the paragraph in ~55 s; repeat distinct orderings of it.
    parts, total = [], 0.0
    k = 0
    while total < long_seconds:
        order = SENTENCES[k % len(SENTENCES) :] + SENTENCES[: k % len(SENTENCES)]
        part = speech.say(" ".join(order), speed=150 + 10 * (k % 3), fmt="wav")
        parts.append(part)
        total += duration(part)
        k += 1
    long_wav = concatenate(parts, workdir / "five-minutes.wav")
    clips = []
    for i in range(10):
        n = 1 + i % 5  # 1..5 sentences: roughly 3 to 25 seconds
        text = " ".join(SENTENCES[i : i + n] if i + n <= 10 else SENTENCES[-n:])
        clips.append(speech.say(text, speed=140 + 15 * (i % 4), fmt=["mp3", "wav", "ogg"][i % 3]))
    return long_wav, clips


def duration(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return float(out.strip())


def admin_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(sql)


class Api:
    def __init__(self, base: str, token: str) -> None:
        import requests

        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def submit(self, path: Path) -> str:
        import requests

        # One session per thread would be cleaner; requests' Session is fine for this bench
        # when each call opens its own file. Use a fresh request for thread safety.
        with path.open("rb") as handle:
            response = requests.post(
                f"{self.base}/api/v1/jobs",
                headers=dict(self.session.headers),
                files={"file": (path.name, handle)},
                data={"language": "en", "model": "tiny.en"},
                timeout=120,
            )
        response.raise_for_status()
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        response = self.session.get(f"{self.base}/api/v1/jobs/{job_id}", timeout=30)
        response.raise_for_status()
        return response.json()

    def wait(self, job_id: str, timeout: float, interval: float = 0.1) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            time.sleep(interval)
        raise TimeoutError(f"job {job_id} not final after {timeout} s")


def pool_children_rss(worker: subprocess.Popen) -> dict[int, int]:
    import psutil

    try:
        children = psutil.Process(worker.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[child.pid] = child.memory_info().rss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="length of the long file")
    parser.add_argument("--repeats", type=int, default=2, help="bare/pipeline runs (a)")
    parser.add_argument("--jobs", type=int, default=100, help="burst size (c)")
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run")
    parser.add_argument("--skip-openai", action="store_true", help="same as leaving b out")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="faster-whisper batch size for the bare engine and the worker (WHISPER_BATCH_SIZE)",
    )
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = f"transcription-{stamp}"
    workdir = Path(tempfile.mkdtemp(prefix="lexiscore-bench-tx-"))
    dbname = f"lexiscore_bench_tx_{stamp.lower()}_{os.getpid()}"
    summary: dict = {
        "started": stamp,
        "command": " ".join([Path(PY).name, *sys.argv]),
        "loadavg_start": load_average(),
    }
    print(f"== {tag}: database {dbname}, load {load_average()}", flush=True)

    from tests.support.processes import RedisServer, free_port, wait_for

    redis_server = RedisServer(appendonly=False).start()
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "lexiscore.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "JWT_SIGNING_KEY": secrets.token_urlsafe(48),
        # A Fernet key: 32 random bytes, url-safe base64.
        "FIELD_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "JWT_ACCESS_TOKEN_MINUTES": "120",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{dbname}",
        "REDIS_URL": redis_server.url,
        "RATE_LIMIT_ENABLED": "false",
        "LEXISCORE_VAR_DIR": str(workdir / "var"),
        "MEDIA_ROOT": str(workdir / "media"),
        "STATIC_ROOT": str(workdir / "static"),
        "LOG_LEVEL": "WARNING",
        "QUOTA_FREE_MINUTES": "100000",
        "QUOTA_TEAM_MINUTES": "100000",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "4",
        "GUNICORN_ACCESSLOG": "/dev/null",
        "GUNICORN_LOGLEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
        "WHISPER_BATCH_SIZE": str(args.batch_size),
    }
    os.environ.update(env)  # this process reads the same database and storage
    admin_sql(f'CREATE DATABASE "{dbname}"')
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=600,
        )
        import django

        django.setup()
        from django.conf import settings

        from apps.accounts.models import Membership, Organisation, Role, User
        from apps.accounts.tokens import token_pair_issue
        from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob
        from workers.engines import TranscriptionOptions, clear_engine_cache, get_engine

        org = Organisation.objects.create(name="Bench", plan="team")
        user = User.objects.create_user(email="bench@bench.example", password=None)
        Membership.objects.create(user=user, organisation=org, role=Role.OWNER)
        token = token_pair_issue(user=user, organisation=org).access

        t0 = time.monotonic()
        long_wav, clips = make_audio(workdir, args.seconds)
        long_seconds = duration(long_wav)
        clip_seconds = [duration(c) for c in clips]
        print(
            f"-- audio: {long_seconds:.1f} s long file, clips {min(clip_seconds):.1f}-"
            f"{max(clip_seconds):.1f} s ({time.monotonic() - t0:.1f} s to make)",
            flush=True,
        )
        summary["audio"] = {"long_seconds": long_seconds, "clip_seconds": clip_seconds}

        log_w = (RESULTS / f"{tag}-gunicorn.log").open("wb")
        log_c = (RESULTS / f"{tag}-worker.log").open("wb")
        logs += [log_w, log_c]
        web = subprocess.Popen(
            [PY, "-m", "gunicorn", "-c", "lexiscore/gunicorn_conf.py", "lexiscore.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=log_w,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(web)
        worker = subprocess.Popen(
            [
                PY,
                "-m",
                "celery",
                "-A",
                "lexiscore",
                "worker",
                "-Q",
                settings.TRANSCRIPTION_QUEUE,
                "--concurrency",
                "1",
                "--pool",
                "prefork",
                "--hostname",
                f"bench-{os.getpid()}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env={**env, "LOG_LEVEL": "INFO"},  # the worker's "ready." line is an INFO line
            stdout=log_c,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(worker)
        worker_log = RESULTS / f"{tag}-worker.log"
        wait_for(lambda: "ready." in worker_log.read_text(errors="replace"), timeout=90)
        base = f"http://127.0.0.1:{port}"
        api = Api(base, token)
        wait_for(lambda: _healthy(base), timeout=60, what="gunicorn")

        # Warm the worker: its first job loads the model (as a real worker's first job does).
        warm = api.wait(api.submit(clips[0]), timeout=300)
        assert warm["status"] == "completed", warm

        # (a) bare engine vs pipeline, alternating.
        engine = get_engine(
            "faster-whisper",
            "tiny.en",
            "cpu",
            cache_dir=settings.WHISPER_MODEL_CACHE_DIR,
            cpu_threads=settings.WHISPER_CPU_THREADS,
            batch_size=args.batch_size or None,
        )
        options = TranscriptionOptions(language="en", beam_size=5, word_timestamps=True)
        engine.transcribe(clips[0], options)  # warm-up
        bare, pipeline, inside = [], [], []
        words = None
        for r in range(args.repeats if "a" in args.parts else 0):
            started = time.monotonic()
            result = engine.transcribe(long_wav, options)
            bare.append(time.monotonic() - started)
            words = len(result.words)
            started = time.monotonic()
            job = api.wait(api.submit(long_wav), timeout=1800)
            pipeline.append(time.monotonic() - started)
            assert job["status"] == "completed", job
            inside.append(job["engine_settings"].get("engine_seconds"))
            print(
                f"   run {r + 1}: bare engine {bare[-1]:.2f} s, pipeline {pipeline[-1]:.2f} s "
                f"(engine inside worker {inside[-1]} s)",
                flush=True,
            )
        if "a" not in args.parts:
            bare, pipeline, inside = [float("nan")], [float("nan")], [float("nan")]
        overhead = statistics.mean(pipeline) / statistics.mean(bare) - 1
        summary["a"] = {
            "bare_s": bare,
            "pipeline_s": pipeline,
            "engine_seconds_in_worker": inside,
            "words": words,
            "overhead_pct": round(100 * overhead, 1),
            "overhead_vs_engine_in_worker_pct": round(
                100 * (statistics.mean(pipeline) / statistics.mean(inside) - 1), 1
            ),
            "rtf_bare": round(long_seconds / statistics.mean(bare), 1),
            "rtf_pipeline": round(long_seconds / statistics.mean(pipeline), 1),
        }
        print(
            f"(a) pipeline overhead {100 * overhead:+.1f} % of engine time "
            f"(bare {statistics.mean(bare):.2f} s = {long_seconds / statistics.mean(bare):.1f}x "
            f"real time; pipeline {statistics.mean(pipeline):.2f} s)",
            flush=True,
        )

        # (b) openai-whisper on the same file, same model, beam and options.
        if "b" in args.parts and not args.skip_openai:
            # faster-whisper right before and right after openai-whisper, so that the ratio
            # compares runs made under the same load (the machine may be shared).
            started = time.monotonic()
            engine.transcribe(long_wav, options)
            fw = [time.monotonic() - started]
            started = time.monotonic()
            ow = get_engine(
                "openai-whisper",
                "tiny.en",
                "cpu",
                cache_dir=settings.WHISPER_MODEL_CACHE_DIR,
                cpu_threads=settings.WHISPER_CPU_THREADS,
            )
            load_s = time.monotonic() - started
            ow.transcribe(clips[0], options)  # warm-up
            started = time.monotonic()
            ow_result = ow.transcribe(long_wav, options)
            ow_s = time.monotonic() - started
            started = time.monotonic()
            engine.transcribe(long_wav, options)
            fw.append(time.monotonic() - started)
            ratio = ow_s / statistics.mean(fw)
            summary["b"] = {
                "faster_s_before_after": fw,
                "openai_s": ow_s,
                "openai_load_s": load_s,
                "words": len(ow_result.words),
                "faster_over_openai": round(ratio, 2),
                "rtf_openai": round(long_seconds / ow_s, 1),
            }
            print(
                f"(b) openai-whisper {ow_s:.2f} s ({long_seconds / ow_s:.1f}x real time); "
                f"faster-whisper {fw[0]:.2f} s before, {fw[1]:.2f} s after: "
                f"{ratio:.2f}x faster",
                flush=True,
            )
            del ow
        clear_engine_cache()
        del engine
        if "c" not in args.parts:
            summary["loadavg_end"] = load_average()
            print(f"load average: start {summary['loadavg_start']}, end {summary['loadavg_end']}")
            return

        # (c) a burst of short jobs submitted at once.
        files = [clips[i % len(clips)] for i in range(args.jobs)]
        audio_total = sum(clip_seconds[i % len(clips)] for i in range(args.jobs))
        samples: list[tuple[float, int, dict]] = []
        stop = threading.Event()
        burst_start = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                done = TranscriptionJob.objects.filter(
                    organisation=org, status=JobStatus.COMPLETED
                ).count()
                samples.append((time.monotonic() - burst_start, done, pool_children_rss(worker)))
                stop.wait(0.5)
            from django.db import connection

            connection.close()

        before = TranscriptionJob.objects.filter(
            organisation=org, status=JobStatus.COMPLETED
        ).count()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(max_workers=16) as pool:
            ids = list(pool.map(api.submit, files))
        submitted_s = time.monotonic() - burst_start
        final = wait_for(
            lambda: (
                TranscriptionJob.objects.filter(pk__in=ids, status__in=["queued", "processing"])
                .count()
                .__eq__(0)
            ),
            timeout=1800,
            interval=0.5,
            what="burst to finish",
        )
        assert final
        burst_s = time.monotonic() - burst_start
        stop.set()
        sampler.join(timeout=5)
        jobs = TranscriptionJob.objects.filter(pk__in=ids)
        statuses = {s: jobs.filter(status=s).count() for s in JobStatus.values}
        with_transcript = Transcript.objects.filter(job_id__in=ids).count()
        finished = sorted(
            (j.finished_at - j.created_at).total_seconds()
            for j in jobs.only("finished_at", "created_at")
        )
        rss_by_done: dict[int, float] = {}
        for _, done, rss in samples:
            if rss:
                rss_by_done[done - before] = max(rss.values()) / 2**20
        marks = [m for m in (1, 10, 25, 50, 75, args.jobs) if m in rss_by_done]
        pids = sorted({pid for _, _, rss in samples for pid in rss})
        all_rss = [max(rss.values()) / 2**20 for _, _, rss in samples if rss]
        summary["c"] = {
            "jobs": args.jobs,
            "submitted_s": round(submitted_s, 2),
            "total_s": round(burst_s, 2),
            "audio_seconds": round(audio_total, 1),
            "jobs_per_min": round(60 * args.jobs / burst_s, 1),
            "audio_rtf": round(audio_total / burst_s, 2),
            "statuses": statuses,
            "with_transcript": with_transcript,
            "first_done_s": round(finished[0], 2),
            "median_done_s": round(statistics.median(finished), 2),
            "last_done_s": round(finished[-1], 2),
            "pool_child_pids": pids,
            "rss_mb_at_completed": {m: round(rss_by_done[m], 1) for m in marks},
            "rss_mb_min_max": [round(min(all_rss), 1), round(max(all_rss), 1)],
        }
        print(
            f"(c) {args.jobs} jobs ({audio_total:.0f} s of audio): submitted in "
            f"{submitted_s:.1f} s, all final after {burst_s:.1f} s "
            f"({60 * args.jobs / burst_s:.1f} jobs/min, {audio_total / burst_s:.1f}x real "
            f"time); statuses {statuses}; transcripts {with_transcript}",
            flush=True,
        )
        print(
            f"    worker pool-child RSS (MB) by jobs completed: "
            f"{summary['c']['rss_mb_at_completed']}; range {summary['c']['rss_mb_min_max']}; "
            f"child pids {pids}",
            flush=True,
        )
        summary["loadavg_end"] = load_average()
        print(f"load average: start {summary['loadavg_start']}, end {summary['loadavg_end']}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for handle in logs:
            handle.close()
        redis_server.kill()
        shutil.rmtree(redis_server.dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if not args.keep_db:
            admin_sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
        (RESULTS / f"{tag}-summary.json").write_text(json.dumps(summary, indent=2))
        print(f"summary: {RESULTS / tag}-summary.json")


def _healthy(base: str) -> bool:
    import requests

    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{base}/healthz", timeout=2).status_code == 200
    return False


if __name__ == "__main__":
    main()
