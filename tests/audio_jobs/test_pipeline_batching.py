"""Cross-job batching through the whole pipeline: API uploads -> Redis -> one real Celery worker
with `--pool threads` and WHISPER_CROSS_JOB_BATCHING, whose job threads share one tiny.en model
and one batch scheduler (the GPU worker's mode, here on the CPU with small batches). Checks that
every job gets its own correct transcript, that windows of different jobs were decoded in the same
batch, and that the worker's /metrics shows the scheduler's counters.
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from django.db import connection

from apps.audio_jobs.models import JobStatus
from tests.audio_jobs.test_pipeline import (
    WER_BOUND,
    broker,
    mail_dir,
    member_auth,
    upload,
    wait_final,
    wer,
)
from tests.support.processes import CeleryWorker, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workers")]

__all__ = ["broker", "mail_dir", "member_auth"]  # fixtures shared with test_pipeline

# Four different recordings of 35-50 s: each is two VAD windows or more, so four jobs queue
# at least eight windows and a batch of up to 8 takes windows of several jobs.
TOPICS = [
    "The quarterly report shows that revenue grew by twelve percent in the northern region.",
    "Our engineers finished the database migration two weeks ahead of the planned schedule.",
    "Customers asked for better subtitles, faster uploads and a clearer pricing page.",
    "The support team answered every ticket within a day during the busy holiday season.",
]
FILLER = (
    "After the meeting everyone agreed to review the numbers again next month and to share "
    "the summary with the whole company before the end of the week."
)


def metric(text: str, name: str, extra: str = "") -> float:
    labels = f'device="cpu",profile="tiny\\.en"{extra}'
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.M)
    assert match, f"{name} missing from the worker's metrics"
    return float(match.group(1))


@pytest.fixture(params=[0, 2], ids=["prepared-in-job-threads", "prepared-in-processes"])
def batching_worker(request, broker, mail_dir, transactional_db, tmp_path):
    port = free_port()
    worker = CeleryWorker(
        broker_url=broker.url,
        database_name=connection.settings_dict["NAME"],
        queues=["transcription.cpu", "email"],
        pool="threads",
        concurrency=4,
        env={
            "TEST_EMAIL_DIR": str(mail_dir),
            "WHISPER_CROSS_JOB_BATCHING": "true",
            "WHISPER_BATCH_SIZE": "8",
            # Generous on a 2-core machine, so that windows of jobs that start a moment apart
            # meet in one batch (the GPU default is 10 ms).
            "WHISPER_BATCH_MAX_WAIT_MS": "400",
            # Decoding, VAD and features in the job threads, or in spawned processes.
            "WHISPER_PREPARE_PROCESSES": str(request.param),
            "WORKER_METRICS_PORT": str(port),
            "WORKER_METRICS_ADDR": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        },
        hostname="batching",
    ).start()
    worker.metrics_url = f"http://127.0.0.1:{port}/metrics"
    worker.prepare_processes = request.param
    yield worker
    worker.kill()


def test_a_threads_pool_worker_batches_windows_of_concurrent_jobs(
    client, member_auth, speech, batching_worker
):
    _owner, auth = member_auth
    texts = [f"{topic} {FILLER} {topic} {FILLER} {topic}" for topic in TOPICS]
    clips = [speech.say(text, speed=150) for text in texts]
    job_ids = [upload(client, auth, clip, language="en").json()["id"] for clip in clips]

    jobs = [wait_final(job_id, timeout=240) for job_id in job_ids]

    for job, text in zip(jobs, texts, strict=True):
        assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
        # Its own recording's words, not a neighbour's from the same batch (the topics differ).
        assert wer(text, job.transcript.text) < WER_BOUND, job.transcript.text
        assert job.engine_settings["cross_job_batching"] is True
        assert job.engine_settings["batched"] is True
        words = [w for s in job.transcript.segments for w in s["words"]]
        assert words and all(w["start"] <= w["end"] for w in words)
        assert job.transcript.duration > 30

    def scrape() -> str:
        with urllib.request.urlopen(batching_worker.metrics_url, timeout=5) as response:
            return response.read().decode()

    # The task counter moves in task_postrun, after the job is already completed in the
    # database: wait for it rather than race it.
    tasks_done = re.compile(
        r'^celery_tasks_total\{queue="transcription.cpu",state="SUCCESS",'
        r'task="workers.transcription.transcribe_job"\} 4.0$',
        re.M,
    )
    scraped: list[str] = [""]

    def ready() -> str | None:
        scraped[0] = scrape()
        body = scraped[0]
        done = "lexiscore_whisper_batches_total" in body and tasks_done.search(body)
        return body if done else None

    try:
        text = wait_for(ready, timeout=15, what="the scheduler's metrics and 4 task successes")
    except TimeoutError as exc:
        tasks = [line for line in scraped[0].splitlines() if line.startswith("celery_tasks")]
        raise AssertionError(f"{exc}; the worker's task counters: {tasks}") from None
    windows = metric(text, "lexiscore_whisper_batch_windows_total")
    batches = metric(text, "lexiscore_whisper_batches_total")
    assert windows >= 2 * len(jobs)
    assert batches < windows  # windows were decoded several at a time
    assert metric(text, "lexiscore_whisper_batch_multi_job_batches_total") >= 1
    assert metric(text, "lexiscore_whisper_batch_failed_windows_total") == 0
    assert metric(text, "lexiscore_whisper_batch_queued_windows") == 0
    assert metric(text, "lexiscore_whisper_batch_size") == 8
    assert metric(text, "lexiscore_whisper_batch_model_seconds_total") > 0
    # The processes run the PyTorch VAD (installed here); the job threads faster-whisper's own.
    vad = "torch" if batching_worker.prepare_processes else "onnx"
    assert (
        metric(text, "lexiscore_whisper_prepare_processes", f',vad="{vad}"')
        == batching_worker.prepare_processes
    )
    assert metric(text, "lexiscore_whisper_prepared_files_total", f',vad="{vad}"') == len(jobs)
    assert metric(text, "lexiscore_whisper_prepare_pool_replacements_total") == 0
    # The task counters of the multiprocess registry are served beside them.
    assert tasks_done.search(text)
