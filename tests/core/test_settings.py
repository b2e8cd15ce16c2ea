"""Production refuses to start without its secrets; the deployment checklist is clean."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import run_manage

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "lexiscore.settings.production",
    "DJANGO_SECRET_KEY": "p" * 10 + "q8Zr5-v7T0bX3cN1mK9jH2gF6dS4aL0pOiUyTrEwQ_zXcVbNm",
    "JWT_SIGNING_KEY": "another-random-value-Q4w8E2r6T0y3U7i1O5p9A_sDfGhJkLzX",
    "FIELD_ENCRYPTION_KEYS": "bm90LWEtcmVhbC1rZXktb25seS1mb3ItdGhpcy10ZXM=",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/lexiscore",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DJANGO_ALLOWED_HOSTS": "lexiscore.example.com",
    "PATH": os.environ["PATH"],
}


def run_django(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_manage(env, *args)


@pytest.mark.parametrize(
    "missing",
    [
        "DJANGO_SECRET_KEY",
        "JWT_SIGNING_KEY",
        "FIELD_ENCRYPTION_KEYS",
        "DATABASE_URL",
        "REDIS_URL",
        "DJANGO_ALLOWED_HOSTS",
    ],
)
def test_production_refuses_to_start_without_a_required_variable(missing):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}

    result = run_django(env, "check")

    assert result.returncode != 0
    assert missing in result.stderr
    assert "ImproperlyConfigured" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("DJANGO_SECRET_KEY", "short", "DJANGO_SECRET_KEY is too weak"),
        ("DJANGO_SECRET_KEY", "django-insecure-" + "x1y2z3" * 10, "DJANGO_SECRET_KEY is too weak"),
        ("JWT_SIGNING_KEY", PRODUCTION_ENV["DJANGO_SECRET_KEY"], "differ from DJANGO_SECRET_KEY"),
        ("FIELD_ENCRYPTION_KEYS", "not-a-fernet-key", "key 1 is not a Fernet key"),
        (
            "FIELD_ENCRYPTION_KEYS",
            PRODUCTION_ENV["FIELD_ENCRYPTION_KEYS"] + ",bm90LWEta2V5",
            "key 2 is not a Fernet key",
        ),
    ],
)
def test_production_refuses_weak_or_shared_keys(variable, value, complaint):
    env = {**PRODUCTION_ENV, variable: value}

    result = run_django(env, "check")

    assert result.returncode != 0
    assert complaint in result.stderr
    if variable == "FIELD_ENCRYPTION_KEYS":
        assert "bm90" not in result.stderr  # the message never shows a key


@pytest.mark.parametrize(
    ("variable", "value"),
    [("WHISPER_VAD_ENGINE", "pytorch"), ("WHISPER_VAD_DEVICE", "gpu")],
)
def test_a_misspelt_vad_setting_stops_the_process_at_start(variable, value):
    result = run_django({**PRODUCTION_ENV, variable: value}, "check")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{variable}={value!r}" in result.stderr


def test_local_mode_generates_one_field_encryption_key_per_machine(tmp_path):
    env = {
        "DJANGO_SETTINGS_MODULE": "lexiscore.settings.local",
        "LEXISCORE_VAR_DIR": str(tmp_path / "var"),
        "PATH": os.environ["PATH"],
    }
    code = (
        "from django.conf import settings; from cryptography.fernet import Fernet;"
        "[Fernet(k) for k in settings.FIELD_ENCRYPTION_KEYS];"
        "print(','.join(settings.FIELD_ENCRYPTION_KEYS))"
    )

    runs = [
        subprocess.run(
            [sys.executable, "-c", "import django; django.setup();" + code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(2)
    ]

    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    key_file = tmp_path / "var" / "secrets" / "field_encryption_key"
    assert runs[0].stdout.strip() == runs[1].stdout.strip() == key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o077 == 0


def test_deployment_checklist_passes_with_production_settings():
    result = run_django(PRODUCTION_ENV, "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_settings_are_https_only():
    code = (
        "from django.conf import settings as s;"
        "print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS,"
        " s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.DEBUG,"
        " s.DATABASES['default']['OPTIONS']['pool']['timeout'] > 0,"
        " 'statement_timeout' in s.DATABASES['default']['OPTIONS']['options'])"
    )

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup();" + code],
        cwd=ROOT,
        env=PRODUCTION_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "True",
        "31536000",
        "True",
        "True",
        "True",
        "False",
        "True",
        "True",
    ]


def _env_example() -> dict[str, str]:
    """The variables `cp .env.example .env` gives every application container."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    names_and_values = (line.partition("=") for line in lines if line[:1].isupper())
    return {name: value for name, _, value in names_and_values}


def test_production_starts_with_env_example_copied_and_its_secrets_filled():
    """`cp .env.example .env`, fill in the secrets: the empty lines left in it (`BACKUP_DIR=`,
    `SENTRY_DSN=`, ...) mean "the default", never the working directory or a JSON error."""
    env = {**_env_example(), **PRODUCTION_ENV, "DATABASE_URL": PRODUCTION_ENV["DATABASE_URL"]}
    assert env["SENTRY_DSN"] == "" and env["CORS_ALLOWED_ORIGINS"] == ""
    code = (
        "from django.conf import settings as s; "
        "print(s.BACKUP_DIR.is_absolute(), s.MEDIA_ROOT != '', s.PLAN_RATE_LIMITS['free']['api'])"
    )

    result = run_django(env, "shell", "--no-imports", "-c", code)

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "300/m"]


@pytest.mark.parametrize(
    ("variable", "expression", "default"),
    [
        ("RATE_LIMIT_PLANS", "s.PLAN_RATE_LIMITS['team']['api']", "1200/m"),
        ("BACKUP_DIR", "s.BACKUP_DIR.name", "backups"),
        ("QUOTA_FREE_MINUTES", "s.PLAN_AUDIO_MINUTES_PER_MONTH['free']", "120"),
        ("RATE_LIMIT_ENABLED", "s.RATE_LIMIT_ENABLED", "True"),
        ("WHISPER_REQUIRED_PROFILES", "s.WHISPER_REQUIRED_PROFILES", "['tiny.en', 'base']"),
    ],
)
def test_an_empty_value_gives_the_default(variable, expression, default):
    env = {**PRODUCTION_ENV, variable: ""}

    result = run_django(
        env,
        "shell",
        "--no-imports",
        "-c",
        f"from django.conf import settings as s; print({expression})",
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == default


def test_a_secret_starting_with_a_dollar_sign_is_taken_literally():
    """django-environ would read `$abc…` as the name of another variable."""
    secret = "$" + PRODUCTION_ENV["JWT_SIGNING_KEY"]
    env = {**PRODUCTION_ENV, "JWT_SIGNING_KEY": secret}

    result = run_django(
        env,
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings as s; print(s.SIMPLE_JWT['SIGNING_KEY'])",
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == secret


def test_the_model_check_is_turned_off_with_none_not_with_an_empty_value():
    env = {**PRODUCTION_ENV, "WHISPER_REQUIRED_PROFILES": "none"}

    result = run_django(
        env,
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings as s; print(s.WHISPER_REQUIRED_PROFILES)",
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
