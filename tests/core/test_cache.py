"""The Redis cache backend: one client per connection pool, counted lookups."""

from __future__ import annotations

import threading

from django.core.cache import cache


def test_cache_calls_reuse_one_redis_client():
    client = cache._cache.get_client()

    assert cache._cache.get_client() is client
    assert cache._cache.get_client(write=True) is client  # one server: one pool


def test_the_shared_client_serves_threads_concurrently():
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                cache.set(f"thread-{n}-{i}", i)
                assert cache.get(f"thread-{n}-{i}") == i
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
