"""Django's Redis cache, counting hits and misses for Prometheus."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache

_MISSING = object()


class InstrumentedRedisCache(RedisCache):
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        from .metrics import CACHE_LOOKUPS

        value = super().get(key, _MISSING, version=version)
        if value is _MISSING:
            CACHE_LOOKUPS.labels(result="miss").inc()
            return default
        CACHE_LOOKUPS.labels(result="hit").inc()
        return value

    def get_many(self, keys: Any, version: int | None = None) -> dict[Any, Any]:
        from .metrics import CACHE_LOOKUPS

        keys = list(keys)
        found = super().get_many(keys, version=version)
        CACHE_LOOKUPS.labels(result="hit").inc(len(found))
        CACHE_LOOKUPS.labels(result="miss").inc(len(keys) - len(found))
        return found
