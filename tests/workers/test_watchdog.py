"""The memory watchdog that recycles thread-pool (GPU) workers."""

from __future__ import annotations

import pytest

from workers.watchdog import MemoryWatchdog, over_limit, resident_mb


@pytest.mark.parametrize(
    ("rss", "gpu", "max_rss", "max_gpu", "recycle"),
    [
        (900.0, None, 1000, 0, False),
        (1100.0, None, 1000, 0, True),
        (1100.0, None, 0, 0, False),
        (100.0, 70_000.0, 1000, 60_000, True),
        (100.0, None, 1000, 60_000, False),
        (100.0, 50_000.0, 1000, 60_000, False),
    ],
)
def test_a_worker_is_recycled_only_past_a_configured_limit(rss, gpu, max_rss, max_gpu, recycle):
    reason = over_limit(rss_mb=rss, gpu_mb=gpu, max_rss_mb=max_rss, max_gpu_mb=max_gpu)

    assert (reason is not None) == recycle


def test_resident_memory_of_this_process_is_read():
    rss = resident_mb()

    assert rss is not None
    assert 10 < rss < 100_000


def test_the_watchdog_names_the_limit_it_passed():
    watchdog = MemoryWatchdog(max_rss_mb=1, max_gpu_mb=0, interval=60)

    assert "WORKER_MAX_RSS_MB=1" in (watchdog.check() or "")
