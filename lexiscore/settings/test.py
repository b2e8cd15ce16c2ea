"""Test settings: real PostgreSQL and Redis (started by .ci/run), nothing on disk outside tmp."""

import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import database_config, env

DEBUG = False
SECRET_KEY = "test-only-secret-key-not-used-anywhere-else-0123456789abcdefghij"  # noqa: S105
JWT_SIGNING_KEY = "test-only-jwt-signing-key-distinct-from-secret-key-0123456789"
SIMPLE_JWT["SIGNING_KEY"] = JWT_SIGNING_KEY  # noqa: F405
FIELD_ENCRYPTION_KEYS = ["dGVzdC1vbmx5LWZpZWxkLWVuY3J5cHRpb24ta2V5LTA="]  # test only
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]

DATABASES = {
    "default": database_config(
        env.str("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/lexiscore")
    )
}
# pytest-django creates test_lexiscore (and test_lexiscore_gwN under xdist).

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
_worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
# xdist's id of this run (inherited by the processes tests start): two suites running at once on
# one Redis (two checkouts) have different key spaces too, not only their workers.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:12]
CACHES = {
    "default": {
        "BACKEND": "apps.core.cache.InstrumentedRedisCache",
        "LOCATION": REDIS_URL,
        # Each xdist worker has its own key space so parallel tests never share counters.
        "KEY_PREFIX": f"lexiscore-test-{_run}-{_worker}" if _run else f"lexiscore-test-{_worker}",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}
# Shared Redis cache, so authentication goes through the principal cache as in production.
AUTH_PRINCIPAL_CACHE_SECONDS = env.int("AUTH_PRINCIPAL_CACHE_SECONDS", default=60)
API_READ_CACHE_SECONDS = env.int("API_READ_CACHE_SECONDS", default=300)
# Every /readyz call checks (tests change the dependencies between calls).
HEALTH_CHECK_CACHE_SECONDS = 0

# Tests that need a real worker start their own broker; the rest never reach a broker.
CELERY_BROKER_URL = env.str("TEST_CELERY_BROKER_URL", default="memory://")
CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(CELERY_BROKER_URL)  # noqa: F405
CELERY_RESULT_BACKEND = None

# A worker process started by a test shares that test process's media root.
_tmp = env.str("TEST_MEDIA_ROOT", default="") or tempfile.mkdtemp(
    prefix=f"lexiscore-test-{_worker}-"
)
MEDIA_ROOT = Path(_tmp)
STORAGES["default"] = {  # noqa: F405
    "BACKEND": "django.core.files.storage.FileSystemStorage",
    "OPTIONS": {"location": _tmp},
}
STORAGES["staticfiles"] = {  # noqa: F405
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
}
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = MEDIA_ROOT / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Argon2 stays the hasher (what production uses) with lighter cost parameters for speed.
ARGON2_TIME_COST = 1
ARGON2_MEMORY_COST = 256  # KiB (the minimum is 8 x parallelism)
ARGON2_PARALLELISM = 1
LOG_FORMAT = "text"
LOGGING["handlers"]["console"]["formatter"] = "text"  # noqa: F405
LOG_LEVEL = "WARNING"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Worker processes started by tests write mail where the test can read it.
if env.str("TEST_EMAIL_DIR", default=""):
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = env.str("TEST_EMAIL_DIR")
