"""Transcript search (`GET /api/v1/jobs?q=`) at scale: server-side time of its query.

Creates a scratch database, migrates it, fills it with ORGS organisations x JOBS_PER_ORG completed
jobs, each with a transcript of about WORDS_PER_TRANSCRIPT words drawn from a Zipf-like
vocabulary (a few words in nearly every transcript, most in few), then runs `EXPLAIN (ANALYZE)`
of the jobs list's first page (25 rows) and its count, as the view runs them
(`apps.audio_jobs.selectors.job_list`), for queries from common to rare, for a sample of
organisations. Prints one JSON object; drops the database unless --keep.

    .venv/bin/python bench/api/search.py --orgs 100 --jobs-per-org 1000

Needs PostgreSQL at BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def scratch_env(name: str) -> dict[str, str]:
    base = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return {
        **os.environ,
        "DATABASE_URL": base.rsplit("/", 1)[0] + f"/{name}",
        "DJANGO_SETTINGS_MODULE": "lexiscore.settings.test",
        "PYTHONPATH": str(ROOT),
        # Filling and VACUUM ANALYZE take minutes; the measured queries report their own time.
        "DB_STATEMENT_TIMEOUT_MS": "900000",
    }


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qAtc", sql], check=True, cwd=ROOT
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orgs", type=int, default=100)
    parser.add_argument("--jobs-per-org", type=int, default=1000)
    parser.add_argument("--words-per-transcript", type=int, default=300)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # the child: fill and measure
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    name = f"bench_search_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {name}")
    env = scratch_env(name)
    try:
        subprocess.run(
            [PY, "manage.py", "migrate", "-v", "0"], check=True, cwd=ROOT, env=env, timeout=600
        )
        result = subprocess.run(
            [PY, __file__, *sys.argv[1:], "--inside", name],
            check=True,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,  # stderr passes through: a failure says why
            text=True,
        )
        print(result.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def vocabulary(rng: random.Random, size: int = 20_000) -> tuple[list[str], list[float]]:
    """Made-up words with Zipf-like frequencies (rank r drawn ∝ 1/r)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(size)})
    rng.shuffle(words)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    return words, weights


def inside(args) -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from apps.accounts.models import Organisation
    from apps.audio_jobs import selectors
    from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob

    rng = random.Random(1234)
    words, weights = vocabulary(rng)
    started = time.perf_counter()
    now = timezone.now()
    orgs = Organisation.objects.bulk_create(
        [Organisation(name=f"Search bench {i}") for i in range(args.orgs)]
    )
    for org in orgs:
        jobs, transcripts = [], []
        for _ in range(args.jobs_per_org):
            job = TranscriptionJob(
                organisation=org,
                status=JobStatus.COMPLETED,
                original_filename=f"{rng.choice(words)}.mp3",
                duration_seconds=120.0,
                audio_validated=True,
                finished_at=now,
                quality_warnings=rng.choice([0, 0, 0, 1]),
            )
            text = " ".join(rng.choices(words, weights, k=args.words_per_transcript))
            jobs.append(job)
            transcripts.append(
                Transcript(
                    job=job,
                    text=text,
                    language="en",
                    language_probability=1.0,
                    duration=120.0,
                    segments=[],
                    word_count=args.words_per_transcript,
                )
            )
        with transaction.atomic():
            TranscriptionJob.objects.bulk_create(jobs, batch_size=1000)
            Transcript.objects.bulk_create(transcripts, batch_size=1000)
    with connection.cursor() as cursor:  # autocommit: VACUUM runs outside a transaction
        cursor.execute("VACUUM ANALYZE")
    fill_seconds = time.perf_counter() - started

    # Queries from common to rare: rank 1 is in nearly every transcript, rank ~5000 in a few.
    queries = {
        "most common word (rank 1)": words[0],
        "common word (rank 10)": words[9],
        "mid word (rank 200)": words[199],
        "rare word (rank 5000)": words[4999],
        "two mid words": f"{words[199]} {words[299]}",
        "phrase of two common words": f'"{words[0]} {words[1]}"',
        "word minus word": f"{words[9]} -{words[0]}",
        "no match": "zzzzzzzzzz",
    }

    def explain(queryset, *, count: bool = False) -> float:
        sql, params = queryset.query.sql_with_params()
        if count:  # the paginator's COUNT(*) of the same rows
            sql = f"SELECT COUNT(*) FROM ({sql}) AS rows"
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return plan[0]["Execution Time"]

    sample = rng.sample(orgs, min(args.samples, len(orgs)))
    results: dict[str, dict] = {}
    for label, q in queries.items():
        for flagged in (None, True):
            page, count = [], []
            for org in sample:
                listed = selectors.job_list(organisation=org, q=q, flagged=flagged)
                page.append(explain(listed[:25]))
                count.append(explain(listed.order_by().values("pk"), count=True))
            name = label + (" &flagged=true" if flagged else "")
            results[name] = {
                "q": q,
                "page_ms_median": round(statistics.median(page), 2),
                "page_ms_p95": round(sorted(page)[int(0.95 * (len(page) - 1))], 2),
                "page_ms_max": round(max(page), 2),
                "count_ms_median": round(statistics.median(count), 2),
                "count_ms_max": round(max(count), 2),
                "matches_per_org": selectors.job_list(organisation=sample[0], q=q).count(),
            }
    print(
        json.dumps(
            {
                "orgs": args.orgs,
                "jobs_per_org": args.jobs_per_org,
                "transcripts": args.orgs * args.jobs_per_org,
                "words_per_transcript": args.words_per_transcript,
                "fill_seconds": round(fill_seconds, 1),
                "samples": len(sample),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
