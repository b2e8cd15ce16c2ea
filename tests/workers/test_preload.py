"""A thread-pool transcription worker loads its models when it starts (WHISPER_PRELOAD_PROFILES,
workers/preload.py): the engine jobs get afterwards, and every preparation process, are ready
before the first job; a real worker does it from its ready signal."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace
from unittest import mock

import pytest
from django.db import connection

from apps.audio_jobs.processing import engine_from_settings
from tests.support.processes import CeleryWorker, free_port, spawned_children, wait_for
from workers import preload
from workers.engines import clear_engine_cache


@pytest.fixture
def batching_settings(settings):
    settings.WHISPER_DEVICE = "cpu"
    settings.WHISPER_ENGINE = "faster-whisper"
    settings.WHISPER_CROSS_JOB_BATCHING = True
    settings.WHISPER_BATCH_SIZE = 4
    settings.WHISPER_PREPARE_PROCESSES = 2
    clear_engine_cache()
    yield settings
    clear_engine_cache()


@pytest.mark.slow
@pytest.mark.xdist_group("batching")
def test_preload_loads_the_engine_jobs_get_and_starts_its_preparation_processes(
    batching_settings,
):
    outcome = preload.preload(["tiny.en"])

    assert re.fullmatch(r"loaded in [\d.]+ s, 2 preparation processes", outcome["tiny.en"])
    engine = engine_from_settings("faster-whisper", "tiny.en")
    assert engine.stats()["prepare_processes"] == 2
    assert engine is engine_from_settings("faster-whisper", "tiny.en")  # no second load


@pytest.mark.slow
@pytest.mark.xdist_group("batching")
def test_an_unknown_profile_is_reported_and_the_others_still_load(batching_settings, caplog):
    with caplog.at_level(logging.ERROR, logger="workers.preload"):
        outcome = preload.preload(["tiny-en", "tiny.en"])

    assert outcome["tiny-en"].startswith("unknown: ")
    assert outcome["tiny.en"].startswith("loaded in ")
    assert "WHISPER_PRELOAD_PROFILES: " in caplog.text


def test_a_profile_whose_engine_fails_to_load_is_reported(settings, caplog):
    with (
        mock.patch(
            "apps.audio_jobs.processing.engine_from_settings", side_effect=OSError("disk gone")
        ),
        caplog.at_level(logging.ERROR, logger="workers.preload"),
    ):
        outcome = preload.preload(["base"])

    assert outcome == {"base": "failed: disk gone"}
    assert "Could not preload base; it loads with its first job" in caplog.text


def test_more_profiles_than_a_worker_keeps_are_warned_about(settings, caplog):
    with (
        mock.patch("apps.audio_jobs.processing.engine_from_settings") as load,
        caplog.at_level(logging.WARNING, logger="workers.preload"),
    ):
        load.return_value = object()  # an engine without a preparation pool
        outcome = preload.preload(["tiny.en", "base", "tiny.en"])  # only two profiles exist

    assert load.call_count == 3
    assert all(text.endswith(", 0 preparation processes") for text in outcome.values())
    assert "names 3 profiles but a worker keeps 2 loaded" in caplog.text


@pytest.mark.parametrize(
    ("pool_module", "starts"),
    [
        ("celery.concurrency.thread", True),
        ("celery.concurrency.solo", True),
        ("celery.concurrency.prefork", False),
    ],
)
def test_it_runs_only_where_tasks_run_in_the_worker_process(settings, caplog, pool_module, starts):
    settings.WHISPER_PRELOAD_PROFILES = ["tiny.en"]
    pool = type("TaskPool", (), {"__module__": pool_module})()
    with (
        mock.patch.object(preload, "preload") as load,
        caplog.at_level(logging.WARNING, logger="workers.preload"),
    ):
        preload._preload_on_start(sender=SimpleNamespace(pool=pool))
        wait_for(lambda: load.called or not starts, timeout=5, what="the preload thread")

    assert load.called is starts
    assert ("is ignored" in caplog.text) is not starts


def test_nothing_is_loaded_without_the_setting(settings):
    settings.WHISPER_PRELOAD_PROFILES = []
    pool = type("TaskPool", (), {"__module__": "celery.concurrency.thread"})()
    with mock.patch.object(preload, "preload") as load:
        preload._preload_on_start(sender=SimpleNamespace(pool=pool))

    load.assert_not_called()


@pytest.mark.slow
@pytest.mark.xdist_group("batching")
def test_a_real_threads_worker_preloads_its_model_and_every_process_before_any_job(
    transactional_db, tmp_path
):
    port = free_port()
    worker = CeleryWorker(
        broker_url="memory://",
        database_name=connection.settings_dict["NAME"],
        queues=["transcription.cpu"],
        pool="threads",
        concurrency=4,
        env={
            "WHISPER_CROSS_JOB_BATCHING": "true",
            "WHISPER_BATCH_SIZE": "4",
            "WHISPER_PREPARE_PROCESSES": "2",
            "WHISPER_PRELOAD_PROFILES": "tiny.en",
            "WORKER_METRICS_PORT": str(port),
            "WORKER_METRICS_ADDR": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        },
        hostname="preload",
    ).start()
    try:
        wait_for(lambda: "Preloaded tiny.en" in worker.log(), timeout=120, what="the preload")
        assert "2 preparation processes" in worker.log()
        assert spawned_children(worker.process.pid) == 2
    finally:
        worker.kill()
