"""Every environment variable the code reads is documented and listed in .env.example."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = [
    re.compile(
        r"""env\.(?:str|int|bool|float|list|json|email_url|db_url)\(\s*f?["']([A-Z][A-Z0-9_]+)["']"""
    ),
    re.compile(r"""os\.environ\.get\(\s*["']([A-Z][A-Z0-9_]+)["']"""),
    re.compile(r"""os\.environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]"""),
    re.compile(r"""(?<![\w.])_env\(\s*["']([A-Z][A-Z0-9_]+)["']"""),
    re.compile(r"""require\(\s*["']([A-Z][A-Z0-9_]+)["']"""),
    re.compile(r"""env_list\(\s*["']([A-Z][A-Z0-9_]+)["']"""),
]
# Set by tooling rather than by an operator.
NOT_OPERATOR_VARIABLES = {
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_TESTRUNUID",
    "TEST_CELERY_BROKER_URL",
    "TEST_EMAIL_DIR",
    "TEST_MEDIA_ROOT",
    "DJANGO_SETTINGS_MODULE",  # documented in its own table; set by the entry points
    "HOSTNAME",  # set by the container runtime
}


def variables_read_by_code() -> set[str]:
    names: set[str] = set()
    for folder in ("lexiscore", "apps", "workers", "docker"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in PATTERNS:
                names.update(pattern.findall(text))
    return names - NOT_OPERATOR_VARIABLES


def test_the_scan_finds_the_core_variables():
    names = variables_read_by_code()

    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "JWT_SIGNING_KEY"} <= names


def test_every_variable_is_in_the_configuration_reference():
    documented = (ROOT / "docs" / "configuration.md").read_text()

    missing = sorted(n for n in variables_read_by_code() if f"`{n}`" not in documented)

    assert missing == []


def test_the_scan_finds_the_variables_of_the_container_scripts_and_gunicorn():
    names = variables_read_by_code()

    assert {"WORKER_WARM_SHUTDOWN_SECONDS", "HEALTHCHECK_TIMEOUT_SECONDS", "FLOWER_PORT"} <= names
    assert {"GUNICORN_WORKERS", "RATE_LIMIT_PLANS", "LOG_FORMAT"} <= names


def test_every_variable_is_in_env_example():
    example = (ROOT / ".env.example").read_text()
    # A commented-out line (`# NAME=value`) lists a variable that compose or an image sets.
    listed = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))

    missing = sorted(variables_read_by_code() - listed)

    assert missing == []
