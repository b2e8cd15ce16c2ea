"""A running job hands its pooled database connection back between progress writes and cancel
checks, so a GPU worker's many job threads share a pool smaller than their number
(`processing.release_connection`)."""

from __future__ import annotations

import threading
import time
import uuid
from unittest import mock

import pytest
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connection, transaction

from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from tests.audio_jobs.factories import JobFactory
from workers.engines.base import TranscriptionOptions
from workers.engines.errors import TranscriptionCancelled

pytestmark = pytest.mark.django_db(transaction=True)


def pool_option(name: str) -> float:
    return connection.settings_dict["OPTIONS"]["pool"][name]


def test_progress_and_cancel_checks_return_the_connection_to_the_pool():
    job = JobFactory(status=JobStatus.PROCESSING)
    tracker = processing._Tracker(job)
    tracker.progress(30.0, 60.0)
    assert connection.connection is None
    assert TranscriptionJob.objects.get(pk=job.pk).progress == 50.0
    assert connection.connection is not None  # the read above checked one out again
    assert tracker.cancelled() is False
    assert connection.connection is None


def test_the_engine_runs_without_a_connection_after_validation_and_model_choice(speech):
    """A presigned upload is validated (a database write) in the worker, and the engine may take
    minutes to load its model: the connection goes back to the pool before the engine runs."""
    with speech.say("Hello there.").open("rb") as handle:
        key = default_storage.save(f"test/{uuid.uuid4()}.wav", File(handle))
    job = JobFactory(status=JobStatus.PROCESSING, audio_key=key, audio_validated=False)
    seen: dict[str, bool] = {}

    class Engine:
        def transcribe(self, path, options, progress_callback, should_cancel):
            seen["connection_held"] = connection.connection is not None
            raise TranscriptionCancelled()

    try:
        with mock.patch.object(
            processing, "_engine_for", return_value=(Engine(), TranscriptionOptions())
        ):
            outcome = processing._run(job)
    finally:
        default_storage.delete(key)

    assert outcome == "cancelled"
    assert seen == {"connection_held": False}
    assert TranscriptionJob.objects.get(pk=job.pk).audio_validated is True


def test_inside_a_transaction_the_connection_stays():
    job = JobFactory(status=JobStatus.PROCESSING)
    with transaction.atomic():
        processing._Tracker(job).progress(10.0, 20.0)
        assert connection.connection is not None
        assert TranscriptionJob.objects.get(pk=job.pk).progress == 50.0


def test_three_times_as_many_job_threads_as_pooled_connections_all_make_progress():
    """Each thread writes progress, then waits as a job does on its engine, three times, half the
    pool's timeout each. Had each kept its connection while waiting (1.5 timeouts), the threads
    beyond the pool's size would wait for one past the pool's timeout and fail."""
    threads_count = 3 * int(pool_option("max_size"))
    wait = pool_option("timeout") / 2
    jobs = [JobFactory(status=JobStatus.PROCESSING) for _ in range(threads_count)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def run(job: TranscriptionJob) -> None:
        try:
            tracker = processing._Tracker(job)
            start.wait()
            for step in range(1, 4):
                tracker._last_write = 0.0  # every call writes (the 2 s throttle is not tested here)
                tracker.progress(step * 10.0, 40.0)
                time.sleep(wait)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    assert errors == []
    assert set(TranscriptionJob.objects.values_list("progress", flat=True)) == {75.0}
