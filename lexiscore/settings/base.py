"""Settings shared by every environment.

Everything is read from the environment (see docs/configuration.md for every variable).
`local.py`, `test.py` and `production.py` only override. Infrastructure is configured by URL;
when no `DATABASE_URL` / `REDIS_URL` / `CELERY_BROKER_URL` is set the platform runs on embedded
defaults (SQLite, local-memory cache, kombu's filesystem broker) so a fresh machine needs no server.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured


class Env(environ.Env):
    """django-environ's reader with two of its behaviours changed, for every setting:

    - an empty value is unset, so its default applies, as ``${NAME:-default}`` does in Compose: a
      ``BACKUP_DIR=`` or ``RATE_LIMIT_PLANS=`` line copied from ``.env.example`` must not turn into
      the working directory or a JSON error;
    - a value is taken literally: django-environ reads one starting with ``$`` as the name of
      another variable, so a generated secret starting with ``$`` would silently become another
      value or the default.
    """

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        value = os.environ.get(var, "")
        if value == "":
            if default is self.NOTSET:
                raise ImproperlyConfigured(f"Set the {var} environment variable")
            if parse_default and default is not None:
                return self.parse_value(default, cast)
            return default
        if cast is None and default is not None and default is not self.NOTSET:
            cast = type(default)
        return self.parse_value(value, cast)


env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# Runtime state of an embedded install (SQLite file, media, broker folders, model cache).
VAR_DIR = Path(env.str("LEXISCORE_VAR_DIR", default=str(BASE_DIR / "var")))


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    return [item for item in env.list(name, default=default or []) if item]


# ------------------------------------------------------------------------------------------------
# Core
# ------------------------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# Overridden with a required value in production.py; local/test set their own.
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS")
# Fernet keys for values encrypted at rest (apps/core/crypto.py): the first encrypts, all decrypt.
# Required in production.py; local generates one per machine, test sets a fixed one.
FIELD_ENCRYPTION_KEYS = [key.strip() for key in env_list("FIELD_ENCRYPTION_KEYS") if key.strip()]
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://localhost:8000").rstrip("/")

ROOT_URLCONF = "lexiscore.urls"
WSGI_APPLICATION = "lexiscore.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

DJANGO_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
THIRD_PARTY_APPS = [
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    "csp",
    "auditlog",
]
LOCAL_APPS = [
    "apps.core",
    "apps.accounts",
    "apps.audit",
    "apps.audio_jobs",
    "apps.notifications",
    "apps.reports",
    "apps.webhooks",
    "apps.feed",
    "apps.openai_compat",
]
INSTALLED_APPS = DJANGO_APPS + THIRD_PARTY_APPS + LOCAL_APPS

MIDDLEWARE = [
    # First: times the whole request, and answers /metrics (token) before host/HTTPS checks.
    "apps.core.metrics.MetricsMiddleware",
    "apps.core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # django-auditlog's middleware, but with the client IP from apps.accounts.network (trusted
    # proxies only), not the spoofable left-most X-Forwarded-For.
    "apps.audit.middleware.AuditlogMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# ------------------------------------------------------------------------------------------------
# Database: PostgreSQL through psycopg 3 with Django's connection pool
# ------------------------------------------------------------------------------------------------
# Web requests get a short statement timeout; Celery workers get a longer one (applied in
# lexiscore/celery.py when a worker starts) because they run bulk writes.
DB_STATEMENT_TIMEOUT_MS = env.int("DB_STATEMENT_TIMEOUT_MS", default=5_000)
DB_WORKER_STATEMENT_TIMEOUT_MS = env.int("DB_WORKER_STATEMENT_TIMEOUT_MS", default=120_000)


def database_config(url: str | None) -> dict:
    """Build the default database from a URL, with pooling and timeouts for PostgreSQL."""
    if not url:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "lexiscore.sqlite3"),
            # SQLite serialises writers: wait for the lock rather than fail under a worker's write.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    config = environ.Env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.postgresql":
        config["OPTIONS"] = {
            "pool": {
                "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
                "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
                # Seconds a request waits for a connection before failing with a 503. While the
                # server is down the pool cannot hand one out and every request waits this long:
                # short, so clients get their 503 (and retry) instead of hanging. A gunicorn
                # worker with one thread never waits for a *busy* pool.
                "timeout": env.float("DB_POOL_TIMEOUT", default=3.0),
                "max_idle": env.float("DB_POOL_MAX_IDLE", default=300.0),
                "max_lifetime": env.float("DB_POOL_MAX_LIFETIME", default=1800.0),
                # psycopg_pool retries a failed connection with doubling delays until this many
                # seconds have passed (its default, 300 s, lets the delay grow past a minute: a
                # process would keep answering 503 that long after PostgreSQL is back). Short,
                # so the attempt gives up and the next request starts a fresh one at once.
                "reconnect_timeout": env.float("DB_POOL_RECONNECT_TIMEOUT", default=5.0),
            },
            "connect_timeout": env.int("DB_CONNECT_TIMEOUT", default=5),
            "options": f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
            "application_name": env.str("DB_APPLICATION_NAME", default="lexiscore"),
        }
        # The pool requires CONN_MAX_AGE=0; CONN_HEALTH_CHECKS makes Django pass psycopg_pool's
        # check_connection, so a pooled connection is verified before each checkout and a
        # PostgreSQL restart costs no failed request.
        config["CONN_MAX_AGE"] = 0
        config["CONN_HEALTH_CHECKS"] = True
    # Transactions are explicit in services (@transaction.atomic) rather than ATOMIC_REQUESTS:
    # reads then cost no BEGIN/COMMIT round trips, and writes still change all-or-nothing.
    return config


DATABASES = {"default": database_config(env.str("DATABASE_URL", default=""))}

# ------------------------------------------------------------------------------------------------
# Cache (shared rate-limit counters live here: Redis in any multi-process deployment)
# ------------------------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "apps.core.cache.InstrumentedRedisCache",
            "LOCATION": env.str("CACHE_URL", default="") or REDIS_URL,
            "KEY_PREFIX": "lexiscore",
            "TIMEOUT": 300,
            "OPTIONS": {
                "socket_connect_timeout": 2,
                "socket_timeout": 2,
                "health_check_interval": 30,
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "lexiscore",
        }
    }

# Seconds a cached user + memberships may serve authentication (apps.accounts.principals; any
# change invalidates it at once, this only bounds changes made outside the application). Off by
# default with the per-process local-memory cache, which cannot be invalidated across processes.
AUTH_PRINCIPAL_CACHE_SECONDS = env.int(
    "AUTH_PRINCIPAL_CACHE_SECONDS", default=60 if REDIS_URL else 0
)
# Seconds a rendered job list/detail or report list may be served from the cache
# (apps.core.generations; every write to a job or report invalidates its organisation's entries
# at once). Off with the per-process local-memory cache.
API_READ_CACHE_SECONDS = env.int("API_READ_CACHE_SECONDS", default=300 if REDIS_URL else 0)
# Seconds a rendered transcript stays in the cache (kept per job generation: an edit or a
# deletion replaces it, so a stale body is never served). 0: render from the database every time.
TRANSCRIPT_CACHE_SECONDS = env.int("TRANSCRIPT_CACHE_SECONDS", default=600)
# Transcript editing (apps/audio_jobs/editing.py): characters per edited segment, segments per
# request, and revisions kept per transcript (an edit past it is refused with 409).
TRANSCRIPT_EDIT_MAX_SEGMENT_CHARS = env.int("TRANSCRIPT_EDIT_MAX_SEGMENT_CHARS", default=2000)
TRANSCRIPT_EDIT_MAX_SEGMENTS = env.int("TRANSCRIPT_EDIT_MAX_SEGMENTS", default=500)
TRANSCRIPT_MAX_REVISIONS = env.int("TRANSCRIPT_MAX_REVISIONS", default=1000)

# ------------------------------------------------------------------------------------------------
# Authentication and passwords
# ------------------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
# Argon2id with the costs below (ARGON2_*); PBKDF2 only verifies (and upgrades) older hashes.
PASSWORD_HASHERS = [
    "apps.accounts.hashers.ConfiguredArgon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# ------------------------------------------------------------------------------------------------
# Static and media files
# ------------------------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))

STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="local")
# Where clients reach the S3-compatible store, when the platform reaches it at another address
# (compose's MinIO: http://minio:9000): presigned uploads are signed for this one.
AWS_S3_PUBLIC_ENDPOINT_URL = env.str("AWS_S3_PUBLIC_ENDPOINT_URL", default="")
if STORAGE_BACKEND == "s3":
    default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME", default=""),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "access_key": env.str("AWS_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default="") or None,
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": env.int("AWS_QUERYSTRING_EXPIRE", default=600),
            "file_overwrite": False,
            "addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default="path"),
            "signature_version": "s3v4",
        },
    }
else:
    default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "file_permissions_mode": 0o640},
    }
STORAGES = {
    "default": default_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Uploads: never hold a whole audio file in memory (files over 2.5 MB stream to a temp file).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200
DATA_UPLOAD_MAX_NUMBER_FILES = 1
FILE_UPLOAD_TEMP_DIR = env.str("FILE_UPLOAD_TEMP_DIR", default="") or None
FILE_UPLOAD_PERMISSIONS = 0o640

# ------------------------------------------------------------------------------------------------
# Security (production.py turns on HTTPS-only behaviour)
# ------------------------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = 60 * 60 * 8
# The browsable API's session login (/api-auth/login/) lands on the signed-in user's own record.
LOGIN_REDIRECT_URL = "/api/v1/me/"
LOGOUT_REDIRECT_URL = "/api-auth/login/"
# The proxy in front of the app must overwrite X-Forwarded-Proto; only then trust it.
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Content Security Policy (django-csp 4). Swagger UI is served with drf-spectacular's split view
# so no inline script is needed; ReDoc and Swagger need inline styles and a blob: worker.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}
_csp_report_uri = env.str("CSP_REPORT_URI", default="")
if _csp_report_uri:
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["report-uri"] = [_csp_report_uri]

# CORS is closed unless origins are listed explicitly; never `*`.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CORS_ALLOW_CREDENTIALS = False
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = (
    "accept",
    "authorization",
    "content-type",
    "user-agent",
    "x-csrftoken",
    "x-requested-with",
    "x-request-id",
    "x-organisation",
    "x-api-key",
    "idempotency-key",
)
CORS_EXPOSE_HEADERS = ("x-request-id", "retry-after", "x-transcript-revision")

# ------------------------------------------------------------------------------------------------
# Django REST framework and the API schema
# ------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.JWTAuthentication",
        "apps.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Per user / API key / anonymous IP, at the organisation plan's rate (PLAN_RATE_LIMITS);
    # views add a stricter window with `throttle_scope = "uploads"`.
    "DEFAULT_THROTTLE_CLASSES": [
        "apps.accounts.ratelimit.ApiRateThrottle",
        "apps.accounts.ratelimit.PlanScopedRateThrottle",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # JSON only: a form or file sent to any other endpoint is 415 before a byte of it is read
    # (DRF's MultiPartParser would spool every file part to disk, unlimited, even on the
    # anonymous sign-in). POST /jobs sets its own parsers (a size-limited multipart upload).
    "DEFAULT_PARSER_CLASSES": ["apps.core.parsers.JSONParser"],
    "DEFAULT_VERSIONING_CLASS": "rest_framework.versioning.URLPathVersioning",
    "DEFAULT_VERSION": "v1",
    "ALLOWED_VERSIONS": ["v1"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.pagination.StandardPagination",
    "PAGE_SIZE": 25,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.exceptions.exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "apps.core.drf.ContentNegotiation",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "LexisCore API",
    "DESCRIPTION": "Speech-to-text for organisations: upload audio, get transcripts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v[0-9]",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {},
    # Each API route is also served under its other spelling (lexiscore/urls.py); the schema
    # lists it once, as written.
    "PREPROCESSING_HOOKS": ["lexiscore.urls.exclude_other_spellings"],
}

# ------------------------------------------------------------------------------------------------
# Celery: delivery guarantees (asserted by tests/core/test_celery_config.py)
# ------------------------------------------------------------------------------------------------
# Tasks are acknowledged only after they finish; a killed worker's task returns to the queue
# (a per-job delivery count in PostgreSQL stops poison messages looping); each process reserves
# one task at a time; the broker's visibility timeout exceeds the longest hard time limit so
# Redis never hands a running task to a second worker.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "filesystem://"
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_IGNORE_RESULT = CELERY_RESULT_BACKEND is None
# The longest any task may run (a transcription of the longest allowed audio).
CELERY_MAX_TASK_TIME_LIMIT = env.int("CELERY_MAX_TASK_TIME_LIMIT", default=6 * 60 * 60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_DEFAULT_TIME_LIMIT", default=10 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 30
# Margin of the visibility timeout over the longest task (fault tests shorten it to see Redis
# redeliver a killed worker's message; never set it below a few minutes in production).
CELERY_VISIBILITY_MARGIN = env.int("CELERY_VISIBILITY_MARGIN", default=3600)
CELERY_VISIBILITY_TIMEOUT = CELERY_MAX_TASK_TIME_LIMIT + CELERY_VISIBILITY_MARGIN


def broker_transport_options(broker_url: str) -> dict:
    """Transport options for the broker at `broker_url` (settings that change the URL call it
    again)."""
    options: dict = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
    if broker_url.startswith("filesystem://"):
        broker_dir = VAR_DIR / "broker"
        for sub in ("queue", "processed", "control"):
            (broker_dir / sub).mkdir(parents=True, exist_ok=True)
        options.update(
            control_folder=str(broker_dir / "control"),
            data_folder_in=str(broker_dir / "queue"),
            data_folder_out=str(broker_dir / "queue"),
            processed_folder=str(broker_dir / "processed"),
            store_processed=False,
        )
    elif broker_url.startswith(("redis://", "rediss://")):
        options.update(
            # A killed worker's unacknowledged message is restored once the visibility timeout
            # has passed, by a sweep every interval x throttle seconds (kombu's defaults: 10 x 10).
            unacked_restore_interval=env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
            unacked_restore_throttle=env.int("CELERY_UNACKED_RESTORE_THROTTLE", default=10),
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
            retry_on_timeout=True,
        )
    return options


CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(CELERY_BROKER_URL)
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=4.0)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_EVENT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "maintenance"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A broker blip (Redis restart, failover) lets running tasks finish: cancelling threw away hours
# of transcription and left the job `processing` until the stuck-job sweep. The unacknowledged
# message comes back after the visibility timeout, and the job lease makes that a no-op.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("CELERY_WORKER_MAX_TASKS_PER_CHILD", default=200)
# KiB; a child over this after a task is replaced (contains leaks in native libraries).
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int(
    "CELERY_WORKER_MAX_MEMORY_PER_CHILD", default=3_000_000
)
# Thread-pool workers (the GPU worker) have no children to recycle: a watchdog stops such a worker
# (warm shutdown; the container restarts it) when its resident memory or the GPU's used memory
# passes these limits in MiB (0: no limit), checked every WORKER_MEMORY_CHECK_SECONDS.
WORKER_MAX_RSS_MB = env.int("WORKER_MAX_RSS_MB", default=0)
WORKER_MAX_GPU_MEMORY_MB = env.int("WORKER_MAX_GPU_MEMORY_MB", default=0)
WORKER_MEMORY_CHECK_SECONDS = env.float("WORKER_MEMORY_CHECK_SECONDS", default=30.0)
# Every worker: restart it (warm shutdown; the container starts a fresh one) when its queues have
# had messages waiting for WORKER_STALL_CHECKS checks in a row, WORKER_STALL_CHECK_SECONDS apart,
# while it held and received no task: a broker consumer that stopped delivering
# (workers/watchdog.py). 0 checks: off.
WORKER_STALL_CHECKS = env.int("WORKER_STALL_CHECKS", default=3)
WORKER_STALL_CHECK_SECONDS = env.float("WORKER_STALL_CHECK_SECONDS", default=30.0)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", default=30)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "CELERY_BEAT_SCHEDULE_FILE", default=str(VAR_DIR / "celerybeat-schedule")
)
CELERY_BEAT_SCHEDULE: dict = {
    "flush-expired-tokens": {
        "task": "workers.maintenance.flush_expired_tokens",
        "schedule": 24 * 60 * 60,
    },
    "redispatch-stale-jobs": {
        "task": "workers.maintenance.redispatch_stale_jobs",
        "schedule": env.int("JOB_SWEEP_INTERVAL_SECONDS", default=60),
        "options": {"expires": 50},
    },
    "backup-database": {
        "task": "workers.maintenance.backup_database",
        "schedule": crontab(hour=env.int("BACKUP_HOUR_UTC", default=2), minute=17),
        "options": {"expires": 3600},
    },
    "retention-cleanup": {
        "task": "workers.maintenance.retention_cleanup",
        "schedule": crontab(minute=43),
        "options": {"expires": 1800},
    },
    "requeue-stuck-jobs": {
        "task": "workers.maintenance.requeue_stuck_jobs",
        "schedule": env.int("STUCK_JOB_SWEEP_INTERVAL_SECONDS", default=300),
        "options": {"expires": 240},
    },
}

# ------------------------------------------------------------------------------------------------
# Audio jobs
# ------------------------------------------------------------------------------------------------
AUDIO_MAX_UPLOAD_BYTES = env.int("AUDIO_MAX_UPLOAD_BYTES", default=500 * 1024 * 1024)
AUDIO_MAX_DURATION_SECONDS = env.int("AUDIO_MAX_DURATION_SECONDS", default=4 * 60 * 60)
AUDIO_PROBE_TIMEOUT_SECONDS = env.int("AUDIO_PROBE_TIMEOUT_SECONDS", default=120)
PRESIGNED_UPLOAD_EXPIRY_SECONDS = env.int("PRESIGNED_UPLOAD_EXPIRY_SECONDS", default=900)
# Share links to transcripts (apps/audio_jobs/shares.py): the longest a link may live, and the
# live links one job may have.
SHARE_LINK_MAX_DAYS = env.int("SHARE_LINK_MAX_DAYS", default=30)
SHARE_LINKS_PER_JOB = env.int("SHARE_LINKS_PER_JOB", default=20)
# Silence this much audio before and after each redacted span (`redact_pii_audio`): Whisper's
# word times are approximate, and a digit half-heard is still heard.
PII_AUDIO_PADDING_SECONDS = env.float("PII_AUDIO_PADDING_SECONDS", default=0.2)
# Speaker diarization (workers/engines/speakers.py): the cosine similarity under which two
# stretches of speech are different speakers (measured: docs/benchmarks.md, "Diarization"), the
# most speakers a job may find or ask for, and where the speaker model is when not installed
# from its package (a file or a folder holding pretrained.pt; its sha256 is checked anyway).
DIARIZATION_THRESHOLD = env.float("DIARIZATION_THRESHOLD", default=0.7)
DIARIZATION_MAX_SPEAKERS = env.int("DIARIZATION_MAX_SPEAKERS", default=10)
DIARIZATION_MODEL_PATH = env.str("DIARIZATION_MODEL_PATH", default="")
# Added to a diarized job's soft time limit, per second of audio (0.25: 4x real time, against
# 16-40x measured on 2 busy cores).
DIARIZATION_TIME_LIMIT_FACTOR = env.float("DIARIZATION_TIME_LIMIT_FACTOR", default=0.25)
# A ticket can still become a job this long after it expired (an upload that started in time);
# after that it is refused (410) and the hourly retention task deletes it and its object.
PRESIGNED_UPLOAD_GRACE_SECONDS = env.int("PRESIGNED_UPLOAD_GRACE_SECONDS", default=3600)
# Audio minutes each plan may transcribe per calendar month (None: unlimited).
PLAN_AUDIO_MINUTES_PER_MONTH: dict[str, int | None] = {
    "free": env.int("QUOTA_FREE_MINUTES", default=120),
    "team": env.int("QUOTA_TEAM_MINUTES", default=6_000),
    "enterprise": None,
}
# Fair use of the shared transcription queue: jobs of one organisation published at once (on
# the queue or running), by plan; the others wait, queued, until one of them ends (0: no limit).
PLAN_ACTIVE_JOBS: dict[str, int] = {
    "free": env.int("ACTIVE_JOBS_FREE", default=3),
    "team": env.int("ACTIVE_JOBS_TEAM", default=25),
    "enterprise": env.int("ACTIVE_JOBS_ENTERPRISE", default=100),
}
TRANSCRIPTION_QUEUE = env.str("TRANSCRIPTION_QUEUE", default="transcription.cpu")
# A message that started processing this many times without finishing is poison: the job fails.
JOB_MAX_DELIVERIES = env.int("JOB_MAX_DELIVERIES", default=3)
# Time limits of one transcription: base + factor x audio duration (soft), hard = soft + 60 s.
TRANSCRIPTION_TIME_LIMIT_BASE = env.int("TRANSCRIPTION_TIME_LIMIT_BASE", default=300)
TRANSCRIPTION_TIME_LIMIT_FACTOR = env.float("TRANSCRIPTION_TIME_LIMIT_FACTOR", default=1.0)
# The sweeper republishes queued jobs whose message may be lost, and requeues processing jobs
# whose worker stopped beating.
JOB_REDISPATCH_AFTER_SECONDS = env.int("JOB_REDISPATCH_AFTER_SECONDS", default=3600)
JOB_HEARTBEAT_TIMEOUT_SECONDS = env.int("JOB_HEARTBEAT_TIMEOUT_SECONDS", default=300)

# ------------------------------------------------------------------------------------------------
# Whisper
# ------------------------------------------------------------------------------------------------
WHISPER_ENGINE = env.str("WHISPER_ENGINE", default="faster-whisper")
WHISPER_DEVICE = env.str("WHISPER_DEVICE", default="cpu")
WHISPER_DEFAULT_PROFILE = env.str("WHISPER_DEFAULT_PROFILE", default="tiny.en")
WHISPER_MODEL_CACHE_DIR = Path(env.str("WHISPER_MODEL_CACHE_DIR", default=str(VAR_DIR / "models")))
WHISPER_CPU_THREADS = env.int("WHISPER_CPU_THREADS", default=2)
# faster-whisper: decode this many VAD-split windows of a file at once (0: one at a time).
# On 2 CPU cores batch 8 is ~2x faster than sequential for ~2x the memory (docs/benchmarks.md).
WHISPER_BATCH_SIZE = env.int("WHISPER_BATCH_SIZE", default=0)
# Cross-job batching (GPU workers, `--pool threads`): one model per process decodes the windows
# of every job the process runs in one queue, up to WHISPER_BATCH_SIZE windows per batch (0: from
# free GPU memory on CUDA, 8 on CPU), waiting at most WHISPER_BATCH_MAX_WAIT_MS to fill a batch.
WHISPER_CROSS_JOB_BATCHING = env.bool("WHISPER_CROSS_JOB_BATCHING", default=False)
WHISPER_BATCH_MAX_WAIT_MS = env.float("WHISPER_BATCH_MAX_WAIT_MS", default=10.0)
# Cross-job batching: decode, VAD-split and make features in this many spawned processes (0: in
# the job threads, which hold the GIL; on a 16-core GPU node 16 processes fed ~3.5x more audio).
WHISPER_PREPARE_PROCESSES = env.int("WHISPER_PREPARE_PROCESSES", default=0)
# Cross-job batching: scheduler threads running batches at once on the one model (CTranslate2
# num_workers). On an H200 4 gave 2.6-3x the throughput of 1 (the GPU image sets 4); on 2 CPU
# cores a second gains ~8 %, hence 1 here (docs/gpu.md).
WHISPER_MODEL_STREAMS = env.int("WHISPER_MODEL_STREAMS", default=1)
# Cross-job batching, preparation processes: the Silero VAD they run. "torch" (PyTorch: ~1.8x a
# process's throughput; workers.engines.silero), "onnx" (faster-whisper's own, ONNX Runtime) or
# "auto" (torch where PyTorch is installed: the GPU image, not the CPU image). Device: "cpu" or
# "cuda" (every preparation process then holds a CUDA context; the GPU image's). Checked here:
# a typo stops the process at start rather than failing jobs after the model has loaded.
WHISPER_VAD_ENGINE = env.str("WHISPER_VAD_ENGINE", default="auto")
WHISPER_VAD_DEVICE = env.str("WHISPER_VAD_DEVICE", default="cpu")
if WHISPER_VAD_ENGINE not in ("auto", "onnx", "torch"):
    raise ImproperlyConfigured(
        f"WHISPER_VAD_ENGINE={WHISPER_VAD_ENGINE!r}: use auto, onnx or torch."
    )
if not re.fullmatch(r"cpu|cuda(:\d+)?", WHISPER_VAD_DEVICE):
    raise ImproperlyConfigured(
        f"WHISPER_VAD_DEVICE={WHISPER_VAD_DEVICE!r}: use cpu, cuda or cuda:<index>."
    )
# Profiles a thread-pool transcription worker (the GPU worker) loads when it starts, in this
# order, spawning its whole preparation pool, instead of with its first job (workers/preload.py);
# empty: none. An unknown name is logged at start and skipped.
WHISPER_PRELOAD_PROFILES = [
    name.strip() for name in env_list("WHISPER_PRELOAD_PROFILES") if name.strip()
]
# Profiles a node must have: the English default and the multilingual model for auto-detection.
# "none": no model check (a web tier without the models). Empty means the default, as for every
# variable.
WHISPER_REQUIRED_PROFILES = [
    name
    for name in env_list("WHISPER_REQUIRED_PROFILES", default=["tiny.en", "base"])
    if name.strip().lower() != "none"
]
# Optional local directories overriding a packaged model: WHISPER_MODEL_DIR_TINY_EN, ..._BASE.
WHISPER_MODEL_DIRS = {
    profile: path
    for profile in ("tiny.en", "base")
    if (path := env.str(f"WHISPER_MODEL_DIR_{profile.replace('.', '_').upper()}", default=""))
}

# ------------------------------------------------------------------------------------------------
# Email
# ------------------------------------------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="LexisCore <no-reply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Email outbox (apps.notifications EmailOutbox, swept by beat): a pending email is published again
# this long after it was queued or claimed; a try that failed transiently is retried with backoff
# (1 min doubling to 1 h), and after EMAIL_OUTBOX_MAX_ATTEMPTS tries the email is `failed`.
EMAIL_OUTBOX_RESEND_AFTER_SECONDS = env.int("EMAIL_OUTBOX_RESEND_AFTER_SECONDS", default=300)
EMAIL_OUTBOX_MAX_ATTEMPTS = env.int("EMAIL_OUTBOX_MAX_ATTEMPTS", default=8)

# ------------------------------------------------------------------------------------------------
# Logging: every line carries the request id (and the job id inside tasks)
# ------------------------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "apps.core.logging.ContextFilter"},
        "redact": {"()": "apps.core.logging.RedactionFilter"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(job_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {
            "format": "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "redact"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR", "propagate": True},
        "celery": {"level": LOG_LEVEL, "propagate": True},
    },
}

# ------------------------------------------------------------------------------------------------
# Metrics and operations (apps/core/metrics.py, workers/metrics.py, apps/core/backups.py)
# ------------------------------------------------------------------------------------------------
# /metrics on web answers only to `Authorization: Bearer <METRICS_TOKEN>`; empty: 404. Workers
# serve theirs on WORKER_METRICS_PORT (read in workers/metrics.py with PROMETHEUS_MULTIPROC_DIR).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PATH = "/metrics"
BACKUP_DIR = Path(env.str("BACKUP_DIR", default=str(VAR_DIR / "backups")))
BACKUP_KEEP = env.int("BACKUP_KEEP", default=14)
BACKUP_TO_STORAGE = env.bool("BACKUP_TO_STORAGE", default=False)
BACKUP_TIMEOUT_SECONDS = env.int("BACKUP_TIMEOUT_SECONDS", default=3 * 60 * 60)
# The rest of a backup after pg_dump: hashing the dump and every stored file for the manifest,
# and the copy to storage. The backup task's soft time limit is the sum of the two (capped by
# CELERY_MAX_TASK_TIME_LIMIT; apps.core.backups.backup_time_limits).
BACKUP_MANIFEST_TIMEOUT_SECONDS = env.int("BACKUP_MANIFEST_TIMEOUT_SECONDS", default=2 * 60 * 60)
# Audio of finished jobs is deleted this many days after the job ended (0: keep forever).
AUDIO_RETENTION_DAYS = env.int("AUDIO_RETENTION_DAYS", default=30)
TEMP_FILE_MAX_AGE_SECONDS = env.int("TEMP_FILE_MAX_AGE_SECONDS", default=24 * 60 * 60)

# ------------------------------------------------------------------------------------------------
# Sentry: on only when SENTRY_DSN is set
# ------------------------------------------------------------------------------------------------
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="local")
SENTRY_RELEASE = env.str("SENTRY_RELEASE", default="")
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)

# ------------------------------------------------------------------------------------------------
# Health
# ------------------------------------------------------------------------------------------------
HEALTH_CHECK_TIMEOUT = env.float("HEALTH_CHECK_TIMEOUT", default=2.0)
# /readyz reuses its last answer this long per process (probes and anonymous callers cannot load
# the database, storage and broker with it); 0: every call checks.
HEALTH_CHECK_CACHE_SECONDS = env.float("HEALTH_CHECK_CACHE_SECONDS", default=2.0)

ADMIN_URL = env.str("DJANGO_ADMIN_URL", default="admin/")

# ------------------------------------------------------------------------------------------------
# JWT (simplejwt): a signing key of its own, never SECRET_KEY; algorithm pinned
# ------------------------------------------------------------------------------------------------
JWT_SIGNING_KEY = env.str("JWT_SIGNING_KEY", default="")
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_TOKEN_MINUTES", default=10)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_TOKEN_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": JWT_SIGNING_KEY,
    "ISSUER": env.str("JWT_ISSUER", default="lexiscore"),
    "AUDIENCE": env.str("JWT_AUDIENCE", default="lexiscore-api"),
    "LEEWAY": 5,
    "AUTH_HEADER_TYPES": ("Bearer",),
}

# ------------------------------------------------------------------------------------------------
# Accounts, authentication and rate limits (apps.accounts, apps.audit)
# ------------------------------------------------------------------------------------------------
# Argon2id cost ("salt rounds"): OWASP's minimum profile by default (19 MiB, 2 passes, 1 lane).
# Raising them re-hashes each password at its next successful login.
ARGON2_TIME_COST = env.int("ARGON2_TIME_COST", default=2)
ARGON2_MEMORY_COST = env.int("ARGON2_MEMORY_COST", default=19_456)  # KiB
ARGON2_PARALLELISM = env.int("ARGON2_PARALLELISM", default=1)

# JWTs name users by their public UUID; `ver` claims are checked against the user's token
# version (apps.accounts.authentication), which revokes access tokens too.
SIMPLE_JWT["USER_ID_FIELD"] = "public_id"
SIMPLE_JWT["USER_ID_CLAIM"] = "user_id"
SIMPLE_JWT["CHECK_USER_IS_ACTIVE"] = True
SIMPLE_JWT["UPDATE_LAST_LOGIN"] = False  # the login service stamps it (one UPDATE, no signal)
# Presenting a rotated refresh token again ends every session of its user (theft response).
JWT_REVOKE_ON_REFRESH_REUSE = env.bool("JWT_REVOKE_ON_REFRESH_REUSE", default=True)

EMAIL_VERIFICATION_MAX_AGE = env.int("EMAIL_VERIFICATION_MAX_AGE_HOURS", default=48) * 3600
PASSWORD_RESET_TIMEOUT = env.int("PASSWORD_RESET_TIMEOUT_MINUTES", default=60) * 60
INVITATION_MAX_AGE = env.int("INVITATION_MAX_AGE_DAYS", default=7) * 24 * 3600
# Invitation emails (apps.accounts.services.organisations): a resend waits this long after the
# last send, one invitation is sent at most this many times (the first send included; 0: no cap),
# and one address receives at most this many invitation emails, across organisations ("": off).
INVITATION_RESEND_COOLDOWN_SECONDS = env.int("INVITATION_RESEND_COOLDOWN_SECONDS", default=300)
INVITATION_SENDS_MAX = env.int("INVITATION_SENDS_MAX", default=5)
INVITATION_RATE_PER_ADDRESS = env.str("INVITATION_RATE_PER_ADDRESS", default="10/d")
# last_used_at of an API key (and its "api_key.used" audit event) is written at most this often.
API_KEY_LAST_USED_INTERVAL = env.int("API_KEY_LAST_USED_INTERVAL_SECONDS", default=300)
# Every organisation starts with its plan's audio quota and each API key has its own rate windows:
# caps keep either from multiplying without an operator (0: no cap).
ORGANISATIONS_PER_USER_MAX = env.int("ORGANISATIONS_PER_USER_MAX", default=5)
API_KEYS_PER_ORGANISATION_MAX = env.int("API_KEYS_PER_ORGANISATION_MAX", default=50)

# Client IP: REMOTE_ADDR, unless the request comes through a proxy listed here (addresses or
# CIDR networks), or the app sits behind exactly TRUSTED_PROXY_COUNT proxies that append to
# X-Forwarded-For. Leave both empty when clients reach the app directly.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES")
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# Rate limits, counted in the default cache (Redis: shared by every replica). Rates are
# "<count>/<period>" with period s, m, h, d, optionally multiplied ("5/15m").
RATE_LIMIT_ENABLED = env.bool("RATE_LIMIT_ENABLED", default=True)
RATE_LIMIT_ANON = env.str("RATE_LIMIT_ANON", default="60/m")  # per client IP
# Failed authentications (unknown API key, bad or revoked token) per client IP; beyond, 429 before
# the credential is looked up. Empty: no such limit.
RATE_LIMIT_AUTH_FAILURES = env.str("RATE_LIMIT_AUTH_FAILURES", default="30/m")
RATE_LIMIT_DEFAULT_PLAN = env.str("RATE_LIMIT_DEFAULT_PLAN", default="free")
# Per user and per API key, by the organisation's plan: "api" for every call, "uploads" for
# views with throttle_scope = "uploads". RATE_LIMIT_PLANS (JSON) overrides or adds plans.
PLAN_RATE_LIMITS: dict[str, dict[str, str]] = {
    "free": {"api": "300/m", "uploads": "20/h"},
    "team": {"api": "1200/m", "uploads": "200/h"},
    "enterprise": {"api": "6000/m", "uploads": "2000/h"},
}
for _plan, _rates in env.json("RATE_LIMIT_PLANS", default={}).items():
    PLAN_RATE_LIMITS[_plan] = {**PLAN_RATE_LIMITS.get(_plan, {}), **_rates}
# Brute-force guards: failed sign-ins (and wrong current passwords) per account and per client
# IP; password-reset / verification / registration emails per address and per client IP.
LOGIN_RATE_PER_ACCOUNT = env.str("LOGIN_RATE_PER_ACCOUNT", default="5/15m")
LOGIN_RATE_PER_IP = env.str("LOGIN_RATE_PER_IP", default="20/15m")
PASSWORD_RESET_RATE_PER_ACCOUNT = env.str("PASSWORD_RESET_RATE_PER_ACCOUNT", default="3/h")
PASSWORD_RESET_RATE_PER_IP = env.str("PASSWORD_RESET_RATE_PER_IP", default="20/h")
# django-ratelimit (used for counting, and by any @ratelimit decorator) shares these choices.
RATELIMIT_USE_CACHE = "default"
# django-ratelimit warns about any backend not on its list; ours is Django's RedisCache with
# hit/miss counters (apps/core/cache.py), atomic incr unchanged.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
RATELIMIT_IP_META_KEY = "apps.accounts.network.ratelimit_ip"

# Audit: django-auditlog entries carry the request id as their correlation id.
AUDITLOG_CID_GETTER = "apps.core.context.get_request_id"
AUDIT_EXPORT_MAX_ROWS = env.int("AUDIT_EXPORT_MAX_ROWS", default=100_000)
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"].update(
    {
        "MemberRoleEnum": "apps.accounts.models.Role",
        "ApiKeyRoleEnum": "apps.accounts.models.ApiKeyRole",
        "InvitationStatusEnum": "apps.accounts.models.Invitation.Status",
        "JobQueueStateEnum": "apps.audio_jobs.models.QueueState",
    }
)

# ------------------------------------------------------------------------------------------------
# Reports and webhooks (apps.reports, apps.webhooks, apps.notifications)
# ------------------------------------------------------------------------------------------------
# Tries of one report before it is `failed` (with its reason); each retry backs off with jitter.
REPORT_MAX_ATTEMPTS = env.int("REPORT_MAX_ATTEMPTS", default=3)
# The report sweeper republishes a report still queued or running, unchanged, this long after it
# was published (a report never published, at once); the report lease makes a duplicate harmless.
REPORT_REDISPATCH_AFTER_SECONDS = env.int("REPORT_REDISPATCH_AFTER_SECONDS", default=900)
REPORT_WPM_BIN_SECONDS = env.int("REPORT_WPM_BIN_SECONDS", default=60)
REPORT_LONG_PAUSE_SECONDS = env.float("REPORT_LONG_PAUSE_SECONDS", default=2.0)
REPORT_LOW_CONFIDENCE_BELOW = env.float("REPORT_LOW_CONFIDENCE_BELOW", default=0.5)
REPORT_WEEKLY_FORMAT = env.str("REPORT_WEEKLY_FORMAT", default="xlsx")
# Data exports (reports of kind `export`, docs/architecture.md "Data export"): a ready export and
# its file are deleted this many days after it was built (failed ones as long after they failed),
# by the hourly retention task.
EXPORT_RETENTION_DAYS = env.int("EXPORT_RETENTION_DAYS", default=7)
# With include_audio, the audio files of one export add up to at most this many bytes (beyond:
# 400 `export_audio_too_large` when asked, or the export fails with that code if the audio grew).
EXPORT_MAX_AUDIO_BYTES = env.int("EXPORT_MAX_AUDIO_BYTES", default=5 * 1024**3)
# The newest webhook deliveries an organisation export holds (deliveries are a log, not data).
EXPORT_MAX_WEBHOOK_DELIVERIES = env.int("EXPORT_MAX_WEBHOOK_DELIVERIES", default=10_000)
# Soft time limit of the export task (hard: 60 s more; both capped by CELERY_MAX_TASK_TIME_LIMIT).
# Reports run under CELERY_DEFAULT_TIME_LIMIT (10 min), too short for an export with audio.
EXPORT_TIME_LIMIT_SECONDS = env.int("EXPORT_TIME_LIMIT_SECONDS", default=2 * 60 * 60)
# Tries of one data export (its own task's retries and the claim's cap; REPORT_MAX_ATTEMPTS is
# for other reports): an export that killed its worker (OOM) holds its requester's or its
# organisation's one export in progress while it is tried again. One claimed again after its
# last try outlived its time limit (killed at the hard limit) fails with `time_limit` at once.
EXPORT_MAX_ATTEMPTS = env.int("EXPORT_MAX_ATTEMPTS", default=2)
# Exports asked for per user and hour (the plan throttle's `exports` scope, on top of the plan's
# `api` rate; RATE_LIMIT_PLANS can set `exports` per plan). One member export per requester and
# one organisation export per organisation are in progress at a time anyway.
for _rates in PLAN_RATE_LIMITS.values():
    _rates.setdefault("exports", env.str("EXPORT_RATE", default="5/h"))
# Webhooks: a try's connect and total timeouts; the retry schedule (seconds after each failed
# try, +-20 % jitter, kept in WebhookDelivery.next_attempt_at); when a failing endpoint is disabled.
WEBHOOK_CONNECT_TIMEOUT = env.float("WEBHOOK_CONNECT_TIMEOUT", default=5.0)
WEBHOOK_TOTAL_TIMEOUT = env.float("WEBHOOK_TOTAL_TIMEOUT", default=20.0)
WEBHOOK_RETRY_SCHEDULE = [
    int(x)
    for x in env_list(
        "WEBHOOK_RETRY_SCHEDULE", default=["5", "300", "1800", "7200", "18000", "36000", "36000"]
    )
]
WEBHOOK_MAX_RETRY_AFTER_SECONDS = env.int("WEBHOOK_MAX_RETRY_AFTER_SECONDS", default=86_400)
WEBHOOK_CLAIM_LEASE_SECONDS = env.int("WEBHOOK_CLAIM_LEASE_SECONDS", default=300)
WEBHOOK_DISABLE_AFTER_FAILURES = env.int("WEBHOOK_DISABLE_AFTER_FAILURES", default=50)
WEBHOOK_DISABLE_AFTER_SECONDS = env.int("WEBHOOK_DISABLE_AFTER_SECONDS", default=5 * 86_400)
# Every event fans out to every subscribed endpoint, and each test send is a delivery on the shared
# webhooks queue: endpoints per organisation and test sends per organisation per hour (0: no cap).
WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX = env.int(
    "WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX", default=20
)
WEBHOOK_TEST_SENDS_PER_HOUR = env.int("WEBHOOK_TEST_SENDS_PER_HOUR", default=10)
WEBHOOK_REDELIVERIES_PER_HOUR = env.int("WEBHOOK_REDELIVERIES_PER_HOUR", default=100)
WEBHOOK_SECRET_ROTATION_OVERLAP_SECONDS = env.int(
    "WEBHOOK_SECRET_ROTATION_OVERLAP_SECONDS", default=86_400
)
# https only unless turned off (local development); loopback receivers only for tests, which set
# WEBHOOK_ALLOW_LOOPBACK explicitly (it is deliberately not read from the environment).
WEBHOOK_REQUIRE_HTTPS = env.bool("WEBHOOK_REQUIRE_HTTPS", default=True)
WEBHOOK_ALLOW_LOOPBACK = False
CELERY_BEAT_SCHEDULE.update(
    {
        "weekly-usage-reports": {
            "task": "workers.reports.create_weekly_usage_reports",
            "schedule": crontab(
                minute=0,
                hour=env.int("REPORT_WEEKLY_HOUR_UTC", default=6),
                day_of_week=env.str("REPORT_WEEKLY_DAY", default="mon"),
            ),
            "options": {"expires": 3600},
        },
        # Reports whose message was never published (broker down) or may be lost.
        "redispatch-stale-reports": {
            "task": "workers.reports.redispatch_stale_reports",
            "schedule": env.int("REPORT_SWEEP_INTERVAL_SECONDS", default=60),
            "options": {"expires": 50},
        },
        # Due webhook retries: short delays only ever live in the database, never in countdowns.
        "send-due-webhook-deliveries": {
            "task": "workers.webhooks.send_due_deliveries",
            "schedule": env.float("WEBHOOK_SWEEP_INTERVAL_SECONDS", default=15.0),
            "options": {"expires": 14},
        },
        # Emails still pending in the outbox (publish lost, worker killed, transient failure).
        "send-due-emails": {
            "task": "workers.emails.send_due_emails",
            "schedule": env.float("EMAIL_OUTBOX_SWEEP_INTERVAL_SECONDS", default=30.0),
            "options": {"expires": 25},
        },
    }
)

# ------------------------------------------------------------------------------------------------
# OpenAI-compatible API (apps.openai_compat): POST /api/openai/v1/audio/transcriptions, translations
# ------------------------------------------------------------------------------------------------
# Requests one web process lets wait for their job at once (each holds a gunicorn thread); the
# next one is answered 503 with Retry-After.
OPENAI_COMPAT_MAX_WAITING = env.int("OPENAI_COMPAT_MAX_WAITING", default=8)
# How long a request waits for its job; then 504 naming the job (X-LexisCore-Job-Id), which goes
# on and can be read from the jobs API.
OPENAI_COMPAT_WAIT_SECONDS = env.int("OPENAI_COMPAT_WAIT_SECONDS", default=300)
# Largest file accepted (OpenAI's own limit is 25 MB; AUDIO_MAX_UPLOAD_BYTES caps it too).
OPENAI_COMPAT_MAX_UPLOAD_BYTES = env.int("OPENAI_COMPAT_MAX_UPLOAD_BYTES", default=25 * 1024 * 1024)
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"].update(
    {
        "OpenAITimestampGranularityEnum": "apps.openai_compat.api.serializers.GRANULARITIES",
        "OpenAIResponseFormatEnum": "apps.openai_compat.services.RESPONSE_FORMATS",
        "RedactionAudioEnum": "apps.audio_jobs.models.REDACTION_AUDIO_OUTCOMES",
    }
)

# ------------------------------------------------------------------------------------------------
# Live feed (apps.feed): GET /api/v1/events, /events/stream (server-sent events)
# ------------------------------------------------------------------------------------------------
# Events are kept this long; a client whose cursor is older gets `reset` and reads state again.
FEED_RETENTION_HOURS = env.int("FEED_RETENTION_HOURS", default=72)
# An open (ASGI) stream ends after this long; the client reconnects with Last-Event-ID and is
# authenticated again. Keep it under the access token lifetime.
FEED_STREAM_SECONDS = env.int("FEED_STREAM_SECONDS", default=300)
# A `: keep-alive` comment when nothing was sent for this long (proxies close idle streams).
FEED_HEARTBEAT_SECONDS = env.float("FEED_HEARTBEAT_SECONDS", default=15.0)
# The reconnect delay given to clients (`retry:`) under WSGI, and how often an open stream reads
# the table when it has no Redis wake-ups.
FEED_POLL_SECONDS = env.float("FEED_POLL_SECONDS", default=2.0)
# How often an open stream checks that its caller may still read the feed.
FEED_ACCESS_RECHECK_SECONDS = env.float("FEED_ACCESS_RECHECK_SECONDS", default=30.0)
# Streams one ASGI process holds at most; beyond, 503 with Retry-After.
FEED_MAX_STREAMS_PER_PROCESS = env.int("FEED_MAX_STREAMS_PER_PROCESS", default=2000)
# Streams one user or API key, and one organisation, hold at once across every process (counted
# in the Redis cache); beyond, 429 `feed_streams_limit`. 0: no such limit.
FEED_MAX_STREAMS_PER_PRINCIPAL = env.int("FEED_MAX_STREAMS_PER_PRINCIPAL", default=10)
FEED_MAX_STREAMS_PER_ORGANISATION = env.int("FEED_MAX_STREAMS_PER_ORGANISATION", default=100)
# Threads of an ASGI process running its streams' reads (at most this many connections at once).
FEED_READ_THREADS = env.int("FEED_READ_THREADS", default=4)
# How long a stream ticket (POST /events/tickets, for EventSource) can open a stream.
FEED_TICKET_SECONDS = env.int("FEED_TICKET_SECONDS", default=600)
# A job's progress is announced each time it passes a multiple of this many percent.
FEED_PROGRESS_STEP_PERCENT = env.int("FEED_PROGRESS_STEP_PERCENT", default=10)
CELERY_BEAT_SCHEDULE["prune-feed-events"] = {
    "task": "workers.maintenance.prune_feed_events",
    "schedule": crontab(minute=29),
    "options": {"expires": 1800},
}
