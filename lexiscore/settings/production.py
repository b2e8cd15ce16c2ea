"""Production: HTTPS only, secrets and infrastructure required from the environment.

Every secret is read without a default. A missing or weak one stops the process at start with a
message that names the variable, before it can serve a request.
"""

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import env, env_list


def require(name: str) -> str:
    value = env.str(name, default="").strip()
    if not value:
        raise ImproperlyConfigured(
            f"The environment variable {name} is required in production and is not set."
        )
    return value


DEBUG = False

SECRET_KEY = require("DJANGO_SECRET_KEY")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure-"):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is too weak: use at least 50 random characters "
        "(python -c 'import secrets; print(secrets.token_urlsafe(64))')."
    )
JWT_SIGNING_KEY = require("JWT_SIGNING_KEY")
if JWT_SIGNING_KEY == SECRET_KEY or len(JWT_SIGNING_KEY) < 32:
    raise ImproperlyConfigured(
        "JWT_SIGNING_KEY must be at least 32 random characters and differ from DJANGO_SECRET_KEY."
    )
SIMPLE_JWT["SIGNING_KEY"] = JWT_SIGNING_KEY  # noqa: F405
FIELD_ENCRYPTION_KEYS = FIELD_ENCRYPTION_KEYS or [require("FIELD_ENCRYPTION_KEYS")]  # noqa: F405
for _position, _key in enumerate(FIELD_ENCRYPTION_KEYS, start=1):
    try:
        Fernet(_key)
    except ValueError:
        raise ImproperlyConfigured(
            f"FIELD_ENCRYPTION_KEYS: key {_position} is not a Fernet key (32 url-safe "
            "base64-encoded bytes). Generate one with: python -c "
            '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        ) from None
del _position, _key

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS") or [require("DJANGO_ALLOWED_HOSTS")]
DATABASES = {"default": database_config(require("DATABASE_URL"))}  # noqa: F405
REDIS_URL = require("REDIS_URL")
CACHES["default"] = {  # noqa: F405
    "BACKEND": "apps.core.cache.InstrumentedRedisCache",
    "LOCATION": env.str("CACHE_URL", default="") or REDIS_URL,
    "KEY_PREFIX": "lexiscore",
    "TIMEOUT": 300,
    "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2, "health_check_interval": 30},
}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(CELERY_BROKER_URL)  # noqa: F405
if STORAGE_BACKEND == "s3":  # noqa: F405
    require("AWS_STORAGE_BUCKET_NAME")

# HTTPS everywhere. Behind a TLS-terminating proxy set DJANGO_SECURE_PROXY_SSL_HEADER=true
# and make sure the proxy overwrites X-Forwarded-Proto.
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_NAME = "__Host-sessionid"
CSRF_COOKIE_NAME = "__Host-csrftoken"

SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="production")
