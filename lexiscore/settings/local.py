"""Local / embedded mode: one machine, no servers needed.

Without DATABASE_URL / REDIS_URL / CELERY_BROKER_URL this runs on SQLite, a local-memory cache and
kombu's filesystem broker (see base.py). Secrets are generated once per machine into var/ rather
than written in the repository.
"""

import secrets
from collections.abc import Callable

from cryptography.fernet import Fernet

from .base import *  # noqa: F403
from .base import VAR_DIR, env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT  # noqa: F405


def _machine_secret(name: str, new: Callable[[], str] = lambda: secrets.token_urlsafe(64)) -> str:
    """Return a random secret kept in var/ (created on first use, readable by the owner only)."""
    path = VAR_DIR / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(new())
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or _machine_secret("django_secret_key")
JWT_SIGNING_KEY = env.str("JWT_SIGNING_KEY", default="") or _machine_secret("jwt_signing_key")
SIMPLE_JWT["SIGNING_KEY"] = JWT_SIGNING_KEY  # noqa: F405
# Losing this file makes the stored webhook secrets unreadable (each endpoint must then rotate).
FIELD_ENCRYPTION_KEYS = FIELD_ENCRYPTION_KEYS or [  # noqa: F405
    _machine_secret("field_encryption_key", new=lambda: Fernet.generate_key().decode())
]

WHITENOISE_USE_FINDERS = True
STORAGES["staticfiles"] = {  # noqa: F405
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
}

# The embedded cache is per process: rate limits are then per process too (documented).
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]
