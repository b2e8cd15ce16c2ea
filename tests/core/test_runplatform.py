"""The README's run command serves /readyz = 200 in embedded mode and against PostgreSQL/Redis."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid

import psycopg
import pytest

from tests.support.processes import ROOT, free_port, wait_for

pytestmark = [pytest.mark.slow]


def ready(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except OSError:
        return None


def run_platform(env: dict[str, str]) -> tuple[int, dict, str]:
    port = free_port()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runplatform",
            "--bind",
            f"127.0.0.1:{port}",
            "--web-workers",
            "1",
            "--no-beat",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        status, body = wait_for(lambda: ready(port), timeout=90, what="/readyz")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    return status, body, output


def local_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        and not key.startswith("PYTEST")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="lexiscore.settings.local",
        LEXISCORE_VAR_DIR=str(tmp_path / "var"),
        **extra,
    )
    return env


def test_embedded_mode_needs_no_server(tmp_path):
    status, body, output = run_platform(local_env(tmp_path))

    assert status == 200, body
    assert "database=sqlite3 broker=filesystem storage=local" in output
    assert (tmp_path / "var" / "lexiscore.sqlite3").exists()
    assert (tmp_path / "var" / "secrets" / "django_secret_key").stat().st_mode & 0o077 == 0


def test_configured_mode_uses_postgresql_and_redis(tmp_path):
    name = f"lexiscore_run_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        env = local_env(
            tmp_path,
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{name}",
            REDIS_URL="redis://127.0.0.1:6379/14",
        )
        status, body, output = run_platform(env)
    finally:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    assert status == 200, body
    assert "database=postgresql broker=redis storage=local" in output
