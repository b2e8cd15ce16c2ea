"""System checks for settings this app depends on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core import checks

# Caches whose counters are not shared between processes, or not incremented atomically.
UNSHARED_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
    "django.core.cache.backends.filebased.FileBasedCache",
    "django.core.cache.backends.db.DatabaseCache",
}


@checks.register(checks.Tags.caches, checks.Tags.security)
def check_rate_limit_cache(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    cache_name = getattr(settings, "RATELIMIT_USE_CACHE", "default")
    backend = settings.CACHES.get(cache_name, {}).get("BACKEND", "")
    if backend in UNSHARED_CACHES and not settings.DEBUG:
        return [
            checks.Warning(
                f"Rate limits and lockouts count in the {backend} cache, which replicas do not "
                "share (or cannot increment atomically).",
                hint="Set REDIS_URL so counters live in Redis.",
                id="accounts.W001",
            )
        ]
    return []


@checks.register(checks.Tags.security)
def check_jwt_settings(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    jwt = settings.SIMPLE_JWT
    if jwt.get("ACCESS_TOKEN_LIFETIME", timedelta(0)) > timedelta(minutes=15):
        messages.append(
            checks.Warning(
                "Access tokens live longer than 15 minutes.",
                hint="Lower JWT_ACCESS_TOKEN_MINUTES (5 to 15).",
                id="accounts.W002",
            )
        )
    if jwt.get("SIGNING_KEY") and jwt.get("SIGNING_KEY") == settings.SECRET_KEY:
        messages.append(checks.Error("The JWT signing key is SECRET_KEY.", id="accounts.E001"))
    if jwt.get("ALGORITHM") != "HS256" and not jwt.get("VERIFYING_KEY"):
        messages.append(
            checks.Error(
                "A JWT algorithm other than HS256 needs a VERIFYING_KEY.", id="accounts.E002"
            )
        )
    return messages
