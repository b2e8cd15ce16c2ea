"""Django's Redis cache, counting hits and misses for Prometheus."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

_MISSING = object()


class ReusingRedisCacheClient(RedisCacheClient):
    """Django's client builds a new `redis.Redis` for every cache call, and each one copies
    redis-py's table of ~170 response callbacks: measurable on a request making several calls.
    A `redis.Redis` is thread-safe (connections come from its pool), so keep one per pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class InstrumentedRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient

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
