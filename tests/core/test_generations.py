"""GenerationalCache: entries loaded before a committed change are never served."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from apps.core.generations import GenerationalCache

pytestmark = pytest.mark.django_db


@pytest.fixture
def reads(settings) -> GenerationalCache:
    settings.TEST_GENERATIONS_SECONDS = 60
    return GenerationalCache("test-generations", timeout_setting="TEST_GENERATIONS_SECONDS")


class Source:
    """A stand-in for the database: a value and a count of reads."""

    def __init__(self, value):
        self.value, self.reads = value, 0

    def load(self):
        self.reads += 1
        return self.value


def test_a_second_read_is_served_from_the_cache(reads):
    source = Source("v1")

    assert reads.get_or_load("org", "page", source.load) == "v1"
    assert reads.get_or_load("org", "page", source.load) == "v1"
    assert source.reads == 1


def test_invalidation_applies_to_the_next_read(reads):
    source = Source("v1")
    reads.get_or_load("org", "page", source.load)

    source.value = "v2"
    reads.invalidate(["org"])

    assert reads.get_or_load("org", "page", source.load) == "v2"


def test_scopes_are_independent(reads):
    a, b = Source("a"), Source("b")
    reads.get_or_load("org-a", "page", a.load)
    reads.get_or_load("org-b", "page", b.load)

    reads.invalidate(["org-a"])
    reads.get_or_load("org-a", "page", a.load)
    reads.get_or_load("org-b", "page", b.load)

    assert (a.reads, b.reads) == (2, 1)


def test_a_value_loaded_before_a_concurrent_commit_is_never_served(reads):
    """A reader loads the old row; meanwhile the writer commits and its on_commit replaces the
    generation; then the reader stores what it loaded. A plain delete would lose this race."""
    source = Source("old")

    def load_while_a_writer_commits():
        value = source.load()
        source.value = "new"
        reads._replace_generations(["org"])  # the writer's on_commit
        return value

    assert reads.get_or_load("org", "page", load_while_a_writer_commits) == "old"
    assert reads.get_or_load("org", "page", source.load) == "new"


def test_the_generation_is_replaced_again_after_the_commit(
    reads, django_capture_on_commit_callbacks
):
    reads.get_or_load("org", "page", Source("v1").load)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reads.invalidate(["org"])
        during = cache.get(reads.generation_key("org"))
    for callback in callbacks:
        callback()

    assert during is not None
    assert cache.get(reads.generation_key("org")) not in (None, during)


def test_none_is_not_cached(reads):
    source = Source(None)
    reads.get_or_load("org", "page", source.load)
    reads.get_or_load("org", "page", source.load)

    assert source.reads == 2


def test_a_failing_load_caches_nothing(reads):
    def fail():
        raise LookupError("404")

    with pytest.raises(LookupError):
        reads.get_or_load("org", "page", fail)
    assert reads.get_or_load("org", "page", Source("ok").load) == "ok"


def test_long_keys_are_hashed(reads):
    key = reads.entry_key("org", "https://example.org/api/v1/jobs?" + "x" * 500)

    assert len(key) < 200


def test_keys_name_the_database(reads, settings):
    from django.db import connection

    assert connection.settings_dict["NAME"] in reads.generation_key("org")


def test_an_unreachable_cache_reads_the_source(reads, monkeypatch):
    source = Source("v1")

    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "get_many", down)
    monkeypatch.setattr(cache, "set_many", down)

    assert reads.get_or_load("org", "page", source.load) == "v1"
    reads.invalidate(["org"])  # logged, not raised


def test_a_zero_timeout_turns_the_cache_off(reads, settings):
    settings.TEST_GENERATIONS_SECONDS = 0
    source = Source("v1")
    reads.get_or_load("org", "page", source.load)
    reads.get_or_load("org", "page", source.load)

    assert source.reads == 2
