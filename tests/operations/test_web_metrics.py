def test_cache_hits_and_misses_are_counted():
    from django.core.cache import cache

    from apps.core.metrics import CACHE_LOOKUPS

    hits = CACHE_LOOKUPS.labels(result="hit")._value.get()
    misses = CACHE_LOOKUPS.labels(result="miss")._value.get()
    cache.set("metrics-probe", 1, 10)

    assert cache.get("metrics-probe") == 1
    assert cache.get("metrics-probe-absent", "fallback") == "fallback"
    assert CACHE_LOOKUPS.labels(result="hit")._value.get() == hits + 1
    assert CACHE_LOOKUPS.labels(result="miss")._value.get() == misses + 1
