"""EXPLAIN ANALYZE of the queries behind the load-tested endpoints, and the Argon2 cost.

Run as a Django script against the seeded scratch database (bench/api/run.py does this after the
load). Builds each query with the same selectors the views use, for a sample of organisations,
runs `EXPLAIN (ANALYZE, FORMAT JSON)` on it and reports the server-side execution time
(median and max over the samples, planning time apart). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lexiscore.settings.production")

import django  # noqa: E402

django.setup()

from django.contrib.auth.hashers import check_password, make_password  # noqa: E402
from django.db import connection  # noqa: E402

from apps.accounts import selectors as account_selectors  # noqa: E402
from apps.accounts.models import Membership, Organisation, User  # noqa: E402
from apps.audio_jobs import selectors as job_selectors  # noqa: E402
from apps.audio_jobs.models import Transcript, TranscriptionJob  # noqa: E402
from apps.reports import selectors as report_selectors  # noqa: E402

SAMPLES = int(os.environ.get("BENCH_EXPLAIN_SAMPLES", "20"))


def explain(queryset) -> tuple[float, float]:
    if isinstance(queryset, tuple):
        sql, params = queryset
    else:
        sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return plan[0]["Execution Time"], plan[0]["Planning Time"]


def main() -> None:
    orgs = list(Organisation.objects.order_by("?")[:SAMPLES])
    queries: dict[str, list] = {}

    def add(name: str, queryset) -> None:
        queries.setdefault(name, []).append(explain(queryset))

    for org in orgs:
        membership = Membership.objects.filter(organisation=org).select_related("user").first()
        user = membership.user
        job = TranscriptionJob.objects.filter(organisation=org, status="completed").first()
        # Authentication and tenancy (every request).
        add("auth: user by id", User.objects.filter(pk=user.pk))
        add(
            "tenancy: membership + organisation",
            Membership.objects.select_related("organisation").filter(
                user=user, organisation_id=org.id
            )[:1],
        )
        # GET /api/v1/jobs (first page) and its count.
        jobs = job_selectors.job_list(organisation=org)
        add("jobs list: page 1 (25 rows)", jobs[:25])
        table = TranscriptionJob._meta.db_table
        add(
            "jobs list: count",
            (f"SELECT COUNT(*) FROM {table} WHERE organisation_id = %s", [org.id]),
        )
        filtered = job_selectors.job_list(organisation=org, status="completed")
        add("jobs list ?status=completed: page 2 (20 rows)", filtered[20:40])
        # GET /api/v1/jobs/{id} and the transcript.
        add(
            "job detail",
            TranscriptionJob.objects.select_related("created_by").filter(
                organisation=org, pk=job.pk
            ),
        )
        add("transcript row", Transcript.objects.filter(job_id=job.pk))
        # /me/, /organisations/, /reports/.
        add("memberships of user", account_selectors.user_memberships(user=user))
        add("reports list", report_selectors.report_list(organisation=org)[:25])

    results = {}
    for name, samples in queries.items():
        execution = [s[0] for s in samples]
        planning = [s[1] for s in samples]
        results[name] = {
            "samples": len(samples),
            "exec_ms_median": round(statistics.median(execution), 3),
            "exec_ms_max": round(max(execution), 3),
            "plan_ms_median": round(statistics.median(planning), 3),
        }

    # What one sign-in pays for the password check with the configured Argon2 parameters.
    encoded = make_password("bench-Passphrase-not-secret-7319")
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        check_password("bench-Passphrase-not-secret-7319", encoded)
        timings.append((time.perf_counter() - started) * 1000)
    from django.conf import settings

    results["argon2 check_password"] = {
        "samples": len(timings),
        "ms_median": round(statistics.median(timings), 1),
        "ms_max": round(max(timings), 1),
        "params": {
            "time_cost": settings.ARGON2_TIME_COST,
            "memory_cost_kib": settings.ARGON2_MEMORY_COST,
            "parallelism": settings.ARGON2_PARALLELISM,
        },
    }
    results["per_request"] = per_request_cost()
    print(json.dumps(results))


def per_request_cost() -> dict:
    """Each endpoint through Django's test client in this process: SQL queries and CPU ms."""
    from django.test import Client

    from apps.accounts.tokens import token_pair_issue

    membership = Membership.objects.select_related("user", "organisation").first()
    org = membership.organisation
    job = TranscriptionJob.objects.filter(organisation=org, status="completed").first()
    client = Client(
        HTTP_HOST="127.0.0.1",
        HTTP_AUTHORIZATION=f"Bearer {token_pair_issue(user=membership.user).access}",
        HTTP_X_ORGANISATION=str(org.id),
        HTTP_ACCEPT="application/json",
    )
    paths = {
        "GET /api/v1/jobs": "/api/v1/jobs",
        "GET /api/v1/jobs?status=&page=": "/api/v1/jobs?status=completed&page_size=20&page=2",
        "GET /api/v1/jobs/{id}": f"/api/v1/jobs/{job.pk}",
        "GET /api/v1/jobs/{id}/transcript?format=json": (
            f"/api/v1/jobs/{job.pk}/transcript?format=json&download=false"
        ),
        "GET /api/v1/me/": "/api/v1/me/",
        "GET /api/v1/organisations/": "/api/v1/organisations/",
        "GET /api/v1/reports/": "/api/v1/reports/",
    }
    out = {}
    for name, path in paths.items():
        for _ in range(5):  # warm caches and imports
            client.get(path)
        sqls: list[str] = []

        def count(execute, sql, params, many, context, sqls=sqls):
            sqls.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            response = client.get(path)
        cpu, wall = [], []
        for _ in range(40):
            c0, w0 = time.process_time(), time.perf_counter()
            client.get(path)
            cpu.append((time.process_time() - c0) * 1000)
            wall.append((time.perf_counter() - w0) * 1000)
        out[name] = {
            "status": response.status_code,
            "bytes": len(response.content),
            "queries": len(sqls),
            "sql": [q[:160] for q in sqls],
            "cpu_ms_median": round(statistics.median(cpu), 2),
            "wall_ms_median": round(statistics.median(wall), 2),
        }
    return out


if __name__ == "__main__":
    main()
