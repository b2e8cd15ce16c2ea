"""API load test: scratch PostgreSQL database + gunicorn (production settings) + headless locust.

    .venv/bin/python bench/api/run.py                        # read mix, 1000 users
    .venv/bin/python bench/api/run.py --users 200 --duration 60
    .venv/bin/python bench/api/run.py --scenario session     # sign-in, reads, refresh, sign-out
    .venv/bin/python bench/api/run.py --scenario login       # POST /api/v1/auth/token/, 50 users

Steps: create a uniquely named database on the local PostgreSQL, migrate it, seed it
(bench/api/seed.py), start gunicorn on 127.0.0.1 with lexiscore.settings.production and generated
secrets, run locust headless (ramp-up, then statistics reset, then `--duration` seconds of
steady load), EXPLAIN ANALYZE the endpoints' queries (bench/api/dbtiming.py), stop gunicorn and
drop the database. Everything is on loopback and bounded in time. Locust CSVs, the gunicorn log
and a JSON summary go to bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
CPUS = os.cpu_count() or 1
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect(**PG, autocommit=True) as conn:
        conn.execute(sql)


def run_step(what: str, args: list[str], env: dict, timeout: float) -> str:
    started = time.monotonic()
    print(f"-- {what} ...", flush=True)
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise SystemExit(f"{what} failed ({done.returncode})")
    print(f"   {what}: {time.monotonic() - started:.1f} s", flush=True)
    return done.stdout


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"gunicorn did not answer {url} within {timeout:.0f} s")


def warm_up(base: str, creds_path: Path) -> dict:
    """Request every distinct read of the mix once (as its organisation's first member), so the
    measurement sees the steady state of a running system: cached pages, jobs, transcripts.
    Returns what was requested and how long it took."""
    import concurrent.futures

    creds = json.loads(creds_path.read_text())
    first_member = {}
    for account in creds["users"]:
        first_member.setdefault(account["organisation"], account["access"])
    requests = []
    for org, token in first_member.items():
        headers = {
            "Authorization": f"Bearer {token}",
            "X-Organisation": org,
            "Accept": "application/json",
        }
        paths = ["/api/v1/jobs", "/api/v1/reports/", "/api/v1/organisations/", "/api/v1/me/"]
        paths += [f"/api/v1/jobs?status={s}&page_size=20&page=1" for s in STATUSES]
        paths.append("/api/v1/jobs?status=completed&page_size=20&page=2")
        paths += [f"/api/v1/jobs/{job}" for job in creds["jobs"][org]]
        paths += [
            f"/api/v1/jobs/{job}/transcript?format=json&download=false"
            for job in creds["completed_jobs"][org]
        ]
        requests += [(path, headers) for path in paths]

    def fetch(item: tuple[str, dict]) -> int:
        path, headers = item
        request = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(fetch, requests))
    return {
        "requests": len(statuses),
        "non_200": sum(1 for status in statuses if status != 200),
        "seconds": round(time.monotonic() - started, 1),
    }


STATUSES = ["completed", "queued", "failed"]  # as in locustfile.py


def read_stats(prefix: Path) -> list[dict]:
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def print_table(rows: list[dict]) -> None:
    head = f"{'endpoint':<46} {'reqs':>7} {'fails':>6} {'p50':>6} {'p95':>6} {'p99':>6} {'rps':>7}"
    print(head)
    print("-" * len(head))
    for row in rows:
        print(
            f"{row['Name'][:46]:<46} {row['Request Count']:>7} {row['Failure Count']:>6} "
            f"{row['50%']:>6} {row['95%']:>6} {row['99%']:>6} {float(row['Requests/s']):>7.1f}"
        )
    print("(latencies in ms, measured by locust on the same machine)")


ACCESS_LINE = re.compile(r'\\?"(GET|POST) (\S+) HTTP/[\d.]+\\?" (\d{3}) \S+ (\d+)ms')
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def server_side(log_path: Path, since: float) -> dict[str, dict]:
    """Request times as gunicorn measured them (inside the worker, without accept queueing)."""
    times: dict[str, list[int]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = ACCESS_LINE.search(line)
        if not match:
            continue
        with contextlib.suppress(ValueError, IndexError):
            stamp = json.loads(line)["time"]
            if datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() < since:
                continue
        method, path, _status, ms = match.groups()
        name = f"{method} {UUID.sub('{id}', path)}"
        times.setdefault(name, []).append(int(ms))
    out = {}
    for name, values in sorted(times.items()):
        values.sort()
        out[name] = {
            "n": len(values),
            "p50_ms": values[len(values) // 2],
            "p95_ms": values[int(len(values) * 0.95)],
            "p99_ms": values[int(len(values) * 0.99)],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["read", "session", "login"], default="read")
    parser.add_argument("--users", type=int, help="simulated users (read 1000, login 50)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second")
    parser.add_argument("--duration", type=int, default=150, help="steady seconds after ramp-up")
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--users-per-org", type=int, default=20)
    parser.add_argument("--jobs-per-org", type=int, default=40)
    # The production defaults of lexiscore/gunicorn_conf.py.
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("GUNICORN_WORKERS", 2 * CPUS + 1))
    )
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", 1)))
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--cold", action="store_true", help="no warm-up pass: start with empty caches"
    )
    parser.add_argument(
        "--no-rate-limits",
        action="store_true",
        help="turn the per-user rate limits off (on by default, as in production)",
    )
    args = parser.parse_args()
    users = args.users or (50 if args.scenario == "login" else 1000)
    # Session users sign in as they arrive: 10/s keeps the ramp's Argon2 work (~20 ms of CPU per
    # sign-in) from queueing the first measured seconds behind it.
    spawn_rate = args.spawn_rate or (25.0 if args.scenario == "read" else 10.0)
    ramp = users / spawn_rate

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = f"api-{args.scenario}-{users}u-{stamp}"
    dbname = f"lexiscore_bench_{stamp.lower()}_{os.getpid()}"
    port = free_port()
    creds = RESULTS / f"{tag}-credentials.json"
    static_root = tempfile.mkdtemp(prefix="lexiscore-bench-static-")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "lexiscore.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "JWT_SIGNING_KEY": secrets.token_urlsafe(48),
        # A Fernet key: 32 random bytes, url-safe base64.
        "FIELD_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "JWT_ACCESS_TOKEN_MINUTES": "120",  # outlives the run: no refresh traffic in the mix
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{dbname}",
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "RATE_LIMIT_ENABLED": "false" if args.no_rate_limits else "true",
        # locust stands in for the load balancer: each simulated user's X-Forwarded-For is its
        # client address, so per-IP limits (anonymous calls, sign-in guards) count per user.
        "TRUSTED_PROXIES": "127.0.0.1",
        "STATIC_ROOT": static_root,
        "LEXISCORE_VAR_DIR": tempfile.mkdtemp(prefix="lexiscore-bench-var-"),
        "LOG_LEVEL": "WARNING",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "GUNICORN_ACCESSLOG": "/dev/null",
        "GUNICORN_LOGLEVEL": "warning",
        "GUNICORN_BACKLOG": "4096",
        "GUNICORN_MAX_REQUESTS": "0",  # no worker recycling in the middle of a measurement
        "DB_POOL_MIN_SIZE": str(args.threads),
        "DB_POOL_MAX_SIZE": str(args.threads + 2),
        "PYTHONUNBUFFERED": "1",
    }
    summary: dict = {
        "scenario": args.scenario,
        "users": users,
        "spawn_rate": spawn_rate,
        "duration_s": args.duration,
        "gunicorn": {"workers": args.workers, "threads": args.threads},
        "rate_limits": not args.no_rate_limits,
        "cold": args.cold,
        "started": stamp,
        "command": " ".join([Path(PY).name, *sys.argv]),
        "loadavg_start": load_average(),
    }
    print(f"== {tag}: database {dbname}, gunicorn on 127.0.0.1:{port}, load {load_average()}")
    admin_sql(f'CREATE DATABASE "{dbname}"')
    gunicorn = None
    log = (RESULTS / f"{tag}-gunicorn.log").open("wb")
    try:
        run_step("migrate", [PY, "manage.py", "migrate", "--noinput", "-v", "0"], env, 600)
        seeded = run_step(
            "seed",
            [
                PY,
                "bench/api/seed.py",
                "--orgs",
                str(args.orgs),
                "--users-per-org",
                str(args.users_per_org),
                "--jobs-per-org",
                str(args.jobs_per_org),
                "--out",
                str(creds),
            ],
            env,
            900,
        )
        print("  ", seeded.strip())
        summary["seed"] = seeded.strip()
        gunicorn = subprocess.Popen(
            [PY, "-m", "gunicorn", "-c", "lexiscore/gunicorn_conf.py", "lexiscore.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        if args.scenario != "login" and not args.cold:
            print("-- warm-up: every read of the mix once ...", flush=True)
            summary["warm_up"] = warm_up(f"http://127.0.0.1:{port}", creds)
            print(f"   warm-up: {summary['warm_up']}", flush=True)
        user_class = {"read": "ReadUser", "session": "SessionUser", "login": "LoginUser"}[
            args.scenario
        ]
        prefix = RESULTS / tag
        run_time = int(ramp + args.duration)
        locust_cmd = [
            str(Path(PY).with_name("locust")),
            "-f",
            "bench/api/locustfile.py",
            user_class,
            "--headless",
            "--host",
            f"http://127.0.0.1:{port}",
            "--users",
            str(users),
            "--spawn-rate",
            str(spawn_rate),
            "--run-time",
            f"{run_time}s",
            "--reset-stats",
            "--stop-timeout",
            "10",
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ]
        summary["locust"] = " ".join(locust_cmd[1:])
        print(
            f"-- locust: {users} users at {spawn_rate}/s (ramp {ramp:.0f} s), then "
            f"{args.duration} s measured (stats reset after ramp-up)",
            flush=True,
        )
        locust_env = {**env, "BENCH_CREDENTIALS": str(creds)}
        measured_from = time.time() + ramp
        done = subprocess.run(
            locust_cmd,
            cwd=ROOT,
            env=locust_env,
            capture_output=True,
            text=True,
            timeout=run_time + 120,
            check=False,
        )
        (RESULTS / f"{tag}-locust.log").write_text(done.stdout + done.stderr)
        summary["loadavg_end"] = load_average()
        rows = read_stats(prefix)
        summary["endpoints"] = [
            {
                "name": row["Name"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": row["50%"],
                "p95_ms": row["95%"],
                "p99_ms": row["99%"],
                "rps": round(float(row["Requests/s"]), 1),
            }
            for row in rows
        ]
        print()
        print_table(rows)
        log.flush()
        summary["server_side"] = server_side(RESULTS / f"{tag}-gunicorn.log", measured_from)
        print(f"\n{'server side (gunicorn access log, after ramp-up)':<52} {'n':>7} ", end="")
        print(f"{'p50':>6} {'p95':>6} {'p99':>6}")
        for name, value in summary["server_side"].items():
            print(
                f"{name[:52]:<52} {value['n']:>7} {value['p50_ms']:>6} {value['p95_ms']:>6} "
                f"{value['p99_ms']:>6}"
            )
        failures = Path(f"{prefix}_failures.csv")
        if failures.exists() and len(failures.read_text().splitlines()) > 1:
            print("\nfailures:\n" + failures.read_text()[-3000:])
            summary["failures"] = failures.read_text()[-3000:]
        timing = json.loads(
            run_step("EXPLAIN ANALYZE", [PY, "bench/api/dbtiming.py"], env, 300).splitlines()[-1]
        )
        summary["db"] = timing
        print(f"\n{'query (EXPLAIN ANALYZE, server side)':<48} {'median ms':>10} {'max ms':>8}")
        for name, value in timing.items():
            if "exec_ms_median" in value:
                print(f"{name:<48} {value['exec_ms_median']:>10} {value['exec_ms_max']:>8}")
        print(
            f"\n{'endpoint in-process, 1 thread, after the load':<46} {'status':>6} "
            f"{'queries':>7} {'cpu ms':>7} {'wall ms':>7} {'bytes':>7}"
        )
        for name, value in timing["per_request"].items():
            print(
                f"{name[:46]:<46} {value['status']:>6} {value['queries']:>7} "
                f"{value['cpu_ms_median']:>7} {value['wall_ms_median']:>7} {value['bytes']:>7}"
            )
        argon = timing["argon2 check_password"]
        print(
            f"argon2 check_password (t={argon['params']['time_cost']}, "
            f"m={argon['params']['memory_cost_kib']} KiB): median {argon['ms_median']} ms, "
            f"max {argon['ms_max']} ms (single thread, in-process)"
        )
        print(f"\nload average: start {summary['loadavg_start']}, end {summary['loadavg_end']}")
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(gunicorn.pid, signal.SIGTERM)
            try:
                gunicorn.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(gunicorn.pid, signal.SIGKILL)
                gunicorn.wait(timeout=10)
        log.close()
        if not args.keep_db:
            admin_sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        (RESULTS / f"{tag}-summary.json").write_text(json.dumps(summary, indent=2))
        print(f"results: {RESULTS / tag}_stats.csv, {tag}-summary.json")


if __name__ == "__main__":
    main()
