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


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )


def run_platform(env: dict[str, str], interact=None) -> tuple[int, dict, str]:
    """Migrate, start `runplatform`, wait for /readyz, run `interact(port)` if given, stop it."""
    port = free_port()
    manage(env, "migrate", "--noinput", "-v0")
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
        if interact is not None:
            interact(port)
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


def test_embedded_mode_transcribes_an_upload_and_tells_the_live_feed(tmp_path):
    """The README's first command does the platform's main job on embedded defaults: an owner
    signs in, uploads speech, the embedded worker transcribes it, and the live feed (a stream,
    served under WSGI as one poll) tells the organisation."""
    import requests

    from tests.speech import SpeechFactory

    env = local_env(tmp_path, LEXISCORE_OWNER_PASSWORD="a-long-Passphrase-42")
    clip = SpeechFactory(tmp_path / "speech").say("The quarterly report is ready.", fmt="mp3")
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "create_owner", "owner@example.com", "Acme")
    seen: dict = {}

    def use(port: int) -> None:
        base = f"http://127.0.0.1:{port}/api/v1"
        token = requests.post(
            f"{base}/auth/token/",
            json={"email": "owner@example.com", "password": "a-long-Passphrase-42"},
            timeout=30,
        ).json()["access"]
        auth = {"Authorization": f"Bearer {token}"}
        with clip.open("rb") as handle:
            created = requests.post(
                f"{base}/jobs",
                headers=auth,
                files={"file": handle},
                data={"language": "en"},
                timeout=60,
            )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        def finished():
            job = requests.get(f"{base}/jobs/{job_id}", headers=auth, timeout=10).json()
            return job if job["status"] in ("completed", "failed") else None

        seen["job"] = wait_for(finished, timeout=180, what="the job to finish")
        seen["stream"] = requests.get(
            f"{base}/events/stream", headers={**auth, "Last-Event-ID": "0"}, timeout=30
        )
        seen["srt"] = requests.get(
            f"{base}/jobs/{job_id}/transcript?format=srt", headers=auth, timeout=30
        )

    status, body, output = run_platform(env, interact=use)

    assert status == 200, body
    assert seen["job"]["status"] == "completed", (seen["job"], output[-3000:])
    assert "quarterly" in seen["srt"].text.lower()
    stream = seen["stream"]
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    types = [
        json.loads(line[len("data: ") :])["type"]
        for line in stream.text.splitlines()
        if line.startswith("data: ")
    ]
    assert [t for t in types if t != "job.progress"] == [
        "job.queued",
        "job.processing",
        "job.completed",
    ]
