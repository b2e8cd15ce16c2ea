"""The worker side of a job: claim it, transcribe it, store the result once.

`job_process` is what the Celery task calls. It is safe to run for the same job any number of
times, concurrently or after a crash:

1. A lease (PostgreSQL advisory lock on its own connection) admits one live worker per job; a
   duplicate delivery while the first worker lives is dropped, and a worker that died released its
   lock with its connection, so the redelivered message takes over.
2. The claim, in one transaction, skips jobs that are no longer queued/processing, counts the
   delivery in `attempts` and fails the job as poison once `JOB_MAX_DELIVERIES` earlier
   deliveries were interrupted (a message that kills its worker every time cannot loop forever).
   A delivery that ends in the worker, however (result, failure, deliberate retry), counts in
   `deliveries_ended`; interrupted = attempts - deliveries_ended.
3. The result is written in one transaction that re-checks the state: one `Transcript` per job,
   and notifications are sent only after that commit (a notification that cannot be published
   is logged and left to its sweep, never raised into the task: the job is completed).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import Organisation
from apps.core.context import job_id_var
from apps.core.metrics import DIARIZATIONS, PII_AUDIO_SILENCED, QUALITY_RERUNS
from apps.core.storage import (
    delete_files_on_commit,
    discard_guarded_file,
    guard_file,
    unguard_file,
)
from workers.engines.base import TranscriptionOptions, TranscriptionResult, parse_task
from workers.engines.errors import EngineError, TranscriptionCancelled
from workers.metrics import observe_quality, observe_redaction, observe_transcription

from . import events, media, redaction, storage
from .editing import count_words
from .leases import JobLease
from .models import ACTIVE_STATUSES, JobStatus, Transcript, TranscriptionJob
from .quality import quality_summary, speech_seconds_from, transcript_quality, warning_count
from .services import QuotaExceeded, dispatch_waiting_on_commit, usage_refund_if_never_started

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 2.0


class JobGone(Exception):
    """The job was deleted while it was being processed."""


class JobTimeLimitExceeded(Exception):
    """The job ran past its deadline (enforced here for pools without Celery time limits)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_process(
    *,
    job_id: str,
    retries: int = 0,
    deadline: float | None = None,
    on_lease: Callable[[], None] | None = None,
) -> str:
    """Process one delivery of a job's message; returns what happened (for logs and tests).

    Only deliveries that ended without the task returning or retrying (the worker died) are held
    against the poison-message cap: each delivery that gets back here is counted in
    `deliveries_ended`, and `retries` (the task's deliberate retry count) is a floor for that
    count should its write have failed (a database outage is a reason to retry).
    `deadline` (a `time.monotonic()` value) raises `JobTimeLimitExceeded` from the engine's
    cancellation check once passed: Celery's thread pool enforces no time limits itself.
    `on_lease` is called once this delivery holds the job's lease: only such a delivery may fail
    the job after an error it could not handle (a duplicate that fails before taking the lease
    would otherwise fail a job another worker is running). Raises `LeaseUnavailable` (transient)
    when the lease cannot be asked for.
    """
    job_id_var.set(str(job_id))
    lease = JobLease(str(job_id))
    if not lease.acquire():
        logger.info("Job %s is being processed by another live worker; dropping duplicate", job_id)
        return "duplicate"
    try:
        if on_lease is not None:
            on_lease()
        outcome, job = _claim(job_id, retries)
        if job is None:
            return outcome
        try:
            return _run(job, deadline)
        finally:
            _delivery_ended(job.pk)
    finally:
        lease.release()


def _delivery_ended(job_id) -> None:
    """Count a delivery that got back from `_run`, whatever its outcome or exception."""
    try:
        TranscriptionJob.objects.filter(pk=job_id).update(
            deliveries_ended=F("deliveries_ended") + 1
        )
        release_connection()
    except Exception:
        # Never mask the outcome; the message's retry count still covers a retried delivery.
        logger.warning("Job %s: could not count the ended delivery", job_id, exc_info=True)


@transaction.atomic
def _claim(job_id: str, retries: int) -> tuple[str, TranscriptionJob | None]:
    job = TranscriptionJob.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        return "missing", None
    if job.status not in ACTIVE_STATUSES:
        return f"skipped-{job.status}", None
    now = timezone.now()
    if job.cancel_requested:
        _finish(job, JobStatus.CANCELLED, now=now)
        return "cancelled", None
    if not _organisation_active(job):
        # Deactivated after the job was queued (its deactivation cancels the jobs it finds; one
        # committed just before it is stopped here). A plain read, no lock: the job's row is
        # locked, and the organisation's is only ever locked after it.
        _finish(
            job,
            JobStatus.CANCELLED,
            now=now,
            error_code="organisation_inactive",
            error_message="The organisation was deactivated.",
        )
        return "cancelled", None
    # Never more ended than started: `attempts` was reset (an operator's retry) without it.
    job.deliveries_ended = min(job.deliveries_ended, job.attempts)
    # Earlier deliveries that never got back to the worker's code (it died under them).
    interrupted = job.attempts - max(job.deliveries_ended, retries)
    job.attempts += 1
    if interrupted >= settings.JOB_MAX_DELIVERIES:
        _finish(
            job,
            JobStatus.FAILED,
            now=now,
            announce=False,
            attempts=job.attempts,
            deliveries_ended=job.deliveries_ended,
            error_code="too_many_attempts",
            error_message=(
                f"Processing was interrupted {interrupted} times (the worker "
                "stopped each time); the job was stopped so it cannot block the queue. "
                "Contact support if the file is valid."
            ),
        )
        # Notified as any failure is (`_fail`): the job.failed webhook and the email, in this
        # transaction; the live feed last (its order lock is held until the commit).
        events.job_finished(job)
        events.job_changed(job)
        _dead_letter_poison(job)
        return "poison", None
    job.status = JobStatus.PROCESSING
    job.started_at = job.started_at or now
    job.heartbeat_at = now
    job.worker = worker_name()
    job.save(
        update_fields=[
            "attempts",
            "deliveries_ended",
            "status",
            "started_at",
            "heartbeat_at",
            "worker",
            "updated_at",
        ]
    )
    events.job_changed(job)
    return "claimed", job


def release_connection() -> None:
    """Give this thread's pooled database connection back while its job downloads and transcribes.

    A GPU worker runs up to 100 jobs in threads; each would otherwise keep a pooled connection
    through its whole transcription, using it once every 2 s, and the pool would need a connection
    per thread. Handed back after each use, a pool of 40 serves them all (the next query checks
    one out again). Only with a pool (without one, it would reconnect every 2 s) and never inside
    a transaction (a caller's, or a test's)."""
    if connection.in_atomic_block or not connection.settings_dict.get("OPTIONS", {}).get("pool"):
        return
    connection.close()


def _run(job: TranscriptionJob, deadline: float | None = None) -> str:
    started = time.monotonic()
    tracker = _Tracker(job, deadline)
    audio: _RedactedAudio | None = None
    release_connection()
    try:
        with storage.local_copy(job.audio_key) as path:
            if not job.audio_validated:
                _validate(job, path)
            engine, options = _engine_for(job)
            # Validating wrote to the database, and loading a model can take minutes at start.
            release_connection()
            result = engine.transcribe(
                path, options, progress_callback=tracker.progress, should_cancel=tracker.cancelled
            )
            done = _pass(job, result, seconds=time.monotonic() - started)
            if job.quality_rerun:
                done = _rerun_if_flagged(job, path, options, tracker, done)
            if job.diarize:
                done.diarization = _diarize(job, path, done.data, tracker)
            if not job.word_timestamps:
                # Computed only to silence redacted audio or to place speaker turns.
                for segment in done.data["segments"]:
                    segment["words"] = []
            result, data, redacted, quality = done.result, done.data, done.redacted, done.quality
            if redacted is not None and job.redact_pii_audio and redacted[1]:
                audio = _store_redacted_audio(job, path, redacted[1])
    except TranscriptionCancelled:
        return _stop_cancelled(job)
    except JobGone:
        logger.info("Job %s was deleted while processing; result discarded", job.pk)
        return "deleted"
    except (media.MediaError, QuotaExceeded) as exc:
        _fail(job, exc.code, exc.message)
        return "failed"
    except EngineError as exc:
        _fail(job, exc.code, exc.message)
        return "failed"
    except FileNotFoundError:
        _fail(job, "audio_missing", "The audio file of this job is no longer in storage.")
        return "failed"
    outcome = "failed"
    try:
        outcome = _complete(
            job,
            result,
            # The kept transcript's time (a discarded first pass is observed on its own).
            processing_seconds=done.seconds,
            quality=quality,
            data=data,
            redaction_done=None if redacted is None else _redaction_outcome(job, *redacted, audio),
            audio=audio,
            diarization=done.diarization,
        )
    except RedactedAudioLost as exc:
        PII_AUDIO_SILENCED.labels("failed").inc()
        _fail(job, exc.code, exc.message)
    finally:
        if audio is not None and outcome != "completed":
            discard_guarded_file(audio.key, audio.guard)
    return outcome


@dataclass
class _Pass:
    """One transcription of the job's audio: the result, its stored form (redacted when asked),
    what redaction found, and the checks."""

    result: TranscriptionResult
    data: dict
    redacted: tuple[dict[str, int], list] | None
    seconds: float = 0.0  # its share of the job's processing time
    quality: dict[str, Any] = field(default_factory=dict)
    diarization: dict[str, Any] | None = None  # the speakers found, or the error (null: not asked)


def _pass(job: TranscriptionJob, result: TranscriptionResult, *, seconds: float) -> _Pass:
    """The stored form of one transcription, redacted before anything is stored or checked, and
    its checks. Its words are kept until the caller has placed the speakers (`_run`)."""
    data = result.to_dict()  # a deep copy: made once, for the checks and the row
    redacted = _redact(job, data)
    checked = data
    if not job.word_timestamps:
        # Checked as it will be stored: without the words computed for the audio's silences or
        # the speakers.
        checked = {**data, "segments": [{**s, "words": []} for s in data["segments"]]}
    done = _Pass(result, data, redacted, seconds=seconds)
    done.quality = _check(job, result, checked)
    return done


class _DiarizationOutOfTime(Exception):
    pass


def _diarize(job: TranscriptionJob, path, data: dict, tracker: _Tracker) -> dict[str, Any]:
    """Label the speakers of the kept transcript `data` (in place: after redaction, so that
    redacted words are labelled and counted as stored) from the audio at `path`; returns the
    job's `diarization`. A failure (the speaker model missing or damaged, the audio unreadable,
    memory, the job's time running out) keeps the transcript, unlabelled, with the reason. A
    cancel still cancels the job."""
    cutoff = _cutoff(job, tracker)

    def cancelled() -> bool:
        if cutoff is not None and time.monotonic() > cutoff:
            raise _DiarizationOutOfTime()
        tracker.hold()  # the heartbeat, while labelling takes minutes on a long file
        return tracker.cancelled()

    started = time.monotonic()
    try:
        cancelled()  # no time left: not even the audio is decoded
        labelled, found = label_speakers(
            path,
            data,
            speakers_expected=job.speakers_expected,
            max_speakers=job.max_speakers,
            should_cancel=cancelled,
        )
    except (TranscriptionCancelled, JobGone):
        raise
    except Exception as exc:
        out_of_time = isinstance(
            exc, _DiarizationOutOfTime | JobTimeLimitExceeded | SoftTimeLimitExceeded
        )
        code = "time_limit" if out_of_time else str(getattr(exc, "code", "") or "")
        code = (code or "diarization_failed")[:64]
        logger.warning("Job %s: diarization failed (%s)", job.pk, code, exc_info=not out_of_time)
        for segment in data["segments"]:  # nothing half-labelled
            segment.pop("speaker", None)
            for word in segment.get("words") or []:
                word.pop("speaker", None)
        DIARIZATIONS.labels("failed").inc()
        return {
            "error": code,
            "message": "Speakers could not be labelled; the transcript is complete.",
        }
    seconds = time.monotonic() - started
    logger.info(
        "Job %s: %d speakers in %d windows (%.1f s)", job.pk, len(labelled), found.windows, seconds
    )
    DIARIZATIONS.labels("done").inc()
    return {"model": found.model, "speakers": labelled, "seconds": round(seconds, 3)}


def label_speakers(
    path,
    data: dict,
    *,
    speakers_expected: int | None = None,
    max_speakers: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[list[dict[str, Any]], Any]:
    """Label the speakers of `data` (in place) from the audio at `path` with the platform's
    speaker model and settings; returns the summary per speaker and the `Diarization`. For the
    worker and `manage.py transcribe --diarize`."""
    from workers.engines import speakers
    from workers.engines.audio import load_audio

    ceiling = settings.DIARIZATION_MAX_SPEAKERS
    found = speakers.diarize_audio(
        load_audio(path),
        speakers.speech_spans(data),
        encoder=speakers.load_encoder(settings.DIARIZATION_MODEL_PATH or None),
        threshold=settings.DIARIZATION_THRESHOLD,
        speakers_expected=speakers_expected,
        max_speakers=min(max_speakers or ceiling, ceiling),
        should_cancel=should_cancel,
    )
    return speakers.assign_speakers(data, found), found


def _cutoff(
    job: TranscriptionJob, tracker: _Tracker, *, then_diarize: bool = False
) -> float | None:
    """When optional work (a second pass, the speakers) must stop, so that the transcript can
    always be stored in time: `RERUN_MARGIN_SECONDS` before the job's deadline, and the time
    silencing the audio may take. `then_diarize`: for a second pass, which leaves the speakers'
    labelling its allowance too (`services.time_limits`)."""
    if tracker.deadline is None:
        return None
    silencing = _silencing_timeout(job) if job.redact_pii_audio else 0.0
    labelling = 0.0
    if then_diarize:
        seconds = float(job.duration_seconds or 0)
        labelling = math.ceil(seconds * settings.DIARIZATION_TIME_LIMIT_FACTOR)
    return tracker.deadline - RERUN_MARGIN_SECONDS - silencing - labelling


# A second pass, or the speakers' labelling, stops this long before the job's own deadline (plus
# the time silencing the audio may take), so that the transcript can always be stored in time.
RERUN_MARGIN_SECONDS = 60.0


def _rerun_if_flagged(
    job: TranscriptionJob, path, options: TranscriptionOptions, tracker: _Tracker, first: _Pass
) -> _Pass:
    """With a warning from the checks, transcribe again with the next larger model for the
    language (`models.larger_profile`) and keep the transcript with fewer warnings (the larger
    model's on a tie: it is the more accurate). `quality["rerun"]` says what happened. A second
    pass that fails (the engine, or the job's time limit) keeps the first transcript: the rerun
    is an improvement, never a risk to the job. Cancellation still cancels. The minutes are the
    job's once; only the compute doubles."""
    from workers.engines.models import larger_profile

    before = warning_count(first.quality)
    if not before:
        return first
    current = str(first.result.engine_info.get("model_profile") or "")
    record: dict[str, Any] = {"from_model": current, "warnings_before": before}
    bigger = larger_profile(current, options.language)
    if bigger is None:
        first.quality["rerun"] = {**record, "skipped": "no_larger_model"}
        return first
    record["to_model"] = bigger
    logger.info(
        "Job %s: %d quality warnings with %s; transcribing again with %s",
        job.pk,
        before,
        current,
        bigger,
    )

    # Its own deadline, well before the job's: on a prefork worker Celery's soft limit would
    # otherwise interrupt whatever runs (the first transcript's completion included).
    cutoff = _cutoff(job, tracker, then_diarize=job.diarize)

    def cancelled() -> bool:
        if cutoff is not None and time.monotonic() > cutoff:
            raise JobTimeLimitExceeded()
        return tracker.cancelled()

    started = time.monotonic()
    try:
        engine = engine_from_settings(settings.WHISPER_ENGINE, bigger)
        release_connection()
        result = engine.transcribe(
            path, options, progress_callback=tracker.hold, should_cancel=cancelled
        )
    except (TranscriptionCancelled, JobGone):
        raise
    except Exception as exc:
        code = getattr(exc, "code", "") or (
            "time_limit"
            if isinstance(exc, JobTimeLimitExceeded | SoftTimeLimitExceeded)
            else type(exc).__name__
        )
        logger.warning(
            "Job %s: the second pass failed (%s); the first is kept", job.pk, code, exc_info=True
        )
        first.quality["rerun"] = {**record, "kept": "original", "error": str(code)[:64]}
        QUALITY_RERUNS.labels(current, bigger, "failed").inc()
        return first
    second = _pass(job, result, seconds=time.monotonic() - started)
    after = warning_count(second.quality)
    better = after is not None and after <= before
    chosen, dropped = (second, first) if better else (first, second)
    chosen.quality["rerun"] = {
        **record,
        "warnings_after": after,
        "kept": "rerun" if better else "original",
    }
    QUALITY_RERUNS.labels(current, bigger, chosen.quality["rerun"]["kept"]).inc()
    # The dropped pass's compute, under its own model (the kept one is observed on completion).
    dropped_info = dropped.result.engine_info
    observe_transcription(
        str(dropped_info.get("engine", "")),
        str(dropped_info.get("model_profile", "")),
        float(job.duration_seconds or dropped.result.duration),
        dropped.seconds,
    )
    return chosen


class AudioRedactionFailed(media.MediaError):
    """The audio could not be silenced (ffmpeg failed or timed out): the job fails, its upload
    as it was."""

    code = "audio_redaction_failed"
    status_code = 500


class RedactedAudioLost(AudioRedactionFailed):
    """The silenced copy was deleted before the job could point at it (storing and completing
    took longer than the guard's delay)."""


@dataclass
class _RedactedAudio:
    key: str
    guard: Any  # the PendingDeletion that deletes it unless the job's completion calls it off
    size_bytes: int
    seconds_silenced: float


def _redact(job: TranscriptionJob, data: dict) -> tuple[dict[str, int], list] | None:
    """Redact the result in place before anything is stored or checked (the quality flags quote
    phrases); returns the entities found per type and the spans, or None when none was asked.
    The caller drops the words the job did not ask for (`_pass`)."""
    if not job.redact_pii:
        return None
    spans = redaction.redact_result(data, job.redact_pii, job.redact_pii_sub or "entity_name")
    if spans:
        logger.info("Job %s: %d spans redacted", job.pk, len(spans))
    return redaction.summarise(spans), spans


def _silencing_timeout(job: TranscriptionJob) -> float:
    """The longest ffmpeg may take to write the job's silenced copy (a re-encode of the file)."""
    return settings.AUDIO_PROBE_TIMEOUT_SECONDS + float(job.duration_seconds or 0) / 10


def _store_redacted_audio(job: TranscriptionJob, path, spans: list) -> _RedactedAudio:
    """Store a copy of the audio with the redacted spans (padded by PII_AUDIO_PADDING_SECONDS)
    silent, under a new key guarded until the job's completion points at it. The original is
    deleted once that commits. Raises `media.MediaError` (the job fails: its audio stays as
    uploaded, for the member to delete or transcribe again)."""
    pad = max(0.0, settings.PII_AUDIO_PADDING_SECONDS)
    silenced = [(span.start - pad, span.end + pad) for span in spans]
    key = storage.redacted_audio_key(job.organisation_id, job.pk)
    timeout = _silencing_timeout(job)
    with tempfile.TemporaryDirectory(prefix="lexiscore-redact-") as folder:
        try:
            copy = media.silence_spans(
                path, Path(folder) / "redacted.flac", silenced, timeout_seconds=timeout
            )
        except media.MediaError as exc:
            logger.warning("Job %s: silencing failed: %s", job.pk, exc.detail[-500:])
            PII_AUDIO_SILENCED.labels("failed").inc()
            raise AudioRedactionFailed(
                "The redacted spans could not be silenced in the audio, so nothing was stored: "
                "transcribe it again, or without redact_pii_audio."
            ) from exc
        size = copy.stat().st_size
        guard = guard_file(key)
        try:
            key = storage.store_file(copy, key)
        except BaseException:
            discard_guarded_file(key, guard)
            raise
    seconds = sum(end - start for start, end in media.merge_spans(silenced))
    return _RedactedAudio(key=key, guard=guard, size_bytes=size, seconds_silenced=seconds)


def _redaction_outcome(
    job: TranscriptionJob, entities: dict[str, int], spans: list, audio: _RedactedAudio | None
) -> dict[str, Any]:
    if audio is not None:
        return {
            "entities": entities,
            "audio": "silenced",
            "audio_seconds_silenced": round(audio.seconds_silenced, 3),
        }
    return {
        "entities": entities,
        "audio": "nothing_to_silence" if job.redact_pii_audio else "not_asked",
    }


def _check(job: TranscriptionJob, result: TranscriptionResult, data: dict) -> dict[str, Any]:
    """The result's automatic quality checks, before the completing transaction takes its locks
    (under a second for a 4-hour transcript; `transcript_quality` never raises)."""
    quality = transcript_quality(
        data,
        speech_seconds=speech_seconds_from(result.engine_info),
        language_declared=bool(job.language),
    )
    if quality.get("flags"):
        logger.info(
            "Job %s quality flags: %s",
            job.pk,
            ", ".join(str(flag.get("code")) for flag in quality["flags"]),
        )
    return quality


def _validate(job: TranscriptionJob, path) -> None:
    """Probe a file the web tier could not (a presigned upload), and hold it to the monthly quota
    now that its duration is known (the web tier could only check that minutes were left).

    The organisation's row is locked while its usage is read and this duration written, so jobs
    validated (or created) at once cannot all fit in the same remaining minutes (the job's row is
    locked before it, in the order `organisation_delete` takes them). Raises `QuotaExceeded`.
    """
    from .services import organisation_lock_for_quota, probe_audio, quota_check, usage_record

    probe = probe_audio(path)
    with transaction.atomic():
        # The job's row first, the organisation's last: the order organisation_delete takes them.
        if not TranscriptionJob.objects.select_for_update().filter(pk=job.pk).exists():
            raise JobGone()
        organisation = organisation_lock_for_quota(job.organisation_id)
        if organisation is None:  # deleted with its jobs meanwhile
            raise JobGone()
        quota_check(organisation=organisation, duration_seconds=probe.duration_seconds)
        job.container, job.codec = probe.format_name, probe.codec
        job.duration_seconds, job.audio_validated = probe.duration_seconds, True
        TranscriptionJob.objects.filter(pk=job.pk).update(
            container=job.container,
            codec=job.codec,
            duration_seconds=job.duration_seconds,
            audio_validated=True,
        )
        usage_record(job=job)


def _engine_for(job: TranscriptionJob):
    from workers.engines.models import choose_profile

    profile = choose_profile(
        job.language or None,
        job.model_profile or None,
        english_profile=settings.WHISPER_DEFAULT_PROFILE,
    )
    engine = engine_from_settings(settings.WHISPER_ENGINE, profile)
    options = TranscriptionOptions(
        language=job.language or None,
        task=parse_task(job.task),
        # Silencing redacted audio and placing speaker turns need the words' times, asked for
        # or not (`_pass` drops them after).
        word_timestamps=job.word_timestamps
        or (bool(job.redact_pii) and job.redact_pii_audio)
        or job.diarize,
        initial_prompt=job.initial_prompt or None,
        hotwords=job.hotwords or None,
    )
    return engine, options


def engine_from_settings(name: str, profile: str):
    """The process's loaded engine for `profile`, configured from settings (loaded on first use).

    faster-whisper decodes VAD-split windows in batches of `WHISPER_BATCH_SIZE` (0: one window at
    a time); with `WHISPER_CROSS_JOB_BATCHING` one model batches the windows of every job the
    process runs in its threads (0: batch size from free GPU memory, 8 on CPU); openai-whisper has
    no batched mode.
    """
    from workers.engines import get_engine

    batch_size = settings.WHISPER_BATCH_SIZE if name == "faster-whisper" else 0
    return get_engine(
        name,
        profile,
        device=settings.WHISPER_DEVICE,
        cache_dir=settings.WHISPER_MODEL_CACHE_DIR,
        model_dir=settings.WHISPER_MODEL_DIRS.get(profile),
        cpu_threads=settings.WHISPER_CPU_THREADS,
        batch_size=batch_size or None,
        cross_job_batching=settings.WHISPER_CROSS_JOB_BATCHING,
        max_wait_ms=settings.WHISPER_BATCH_MAX_WAIT_MS,
        prepare_processes=settings.WHISPER_PREPARE_PROCESSES,
        model_streams=settings.WHISPER_MODEL_STREAMS,
        vad_engine=settings.WHISPER_VAD_ENGINE,
        vad_device=settings.WHISPER_VAD_DEVICE,
    )


class _Tracker:
    """Writes progress and heartbeats, and reads the cancel flag, at most every 2 seconds.

    Both are best effort: a database error (PostgreSQL restarting, the pool exhausted) is logged
    and the transcription goes on, the next write or read trying again 2 s later. Raised from the
    engine's callback it would retry the task and transcribe the whole file again; only storing
    the result (`_complete`, `_fail`) is worth a retry. A cancel request is then seen late, and a
    heartbeat missing for `JOB_HEARTBEAT_TIMEOUT_SECONDS` lets the stuck-job sweeper requeue the
    job if the lease went with the outage too (a PostgreSQL restart): it runs again, and the first
    result stored wins, the other being discarded.
    """

    def __init__(self, job: TranscriptionJob, deadline: float | None = None) -> None:
        self.job = job
        self.deadline = deadline
        self._last_write = 0.0
        self._last_read = 0.0
        self._cancel = False
        self._announced_step = 0

    def progress(self, seconds_done: float, total: float) -> None:
        now = time.monotonic()
        if now - self._last_write < PROGRESS_INTERVAL_SECONDS and seconds_done < total:
            return
        self._last_write = now
        percent = 100.0 * min(seconds_done / total, 1.0) if total > 0 else 0.0
        progress = round(min(percent, 99.9), 1)
        step = int(progress // max(1, settings.FEED_PROGRESS_STEP_PERCENT))
        try:
            with transaction.atomic():
                # Only while processing: a duplicate delivery that lost the race (the job is
                # completed, or queued again) must neither move its progress nor announce any.
                updated = TranscriptionJob.objects.filter(
                    pk=self.job.pk, status=JobStatus.PROCESSING
                ).update(progress=progress, heartbeat_at=timezone.now())
                # The live feed hears when progress reaches a higher step (10 %, 20 %, ...), not
                # of every write.
                if updated and step > self._announced_step:
                    events.job_progressed(self.job, progress)
            gone = not updated and not TranscriptionJob.objects.filter(pk=self.job.pk).exists()
            if updated and step > self._announced_step:
                self._announced_step = step
            release_connection()
        except DatabaseError:
            _database_blip(self.job, "write its progress and heartbeat")
            return
        if gone:
            raise JobGone()

    def hold(self, done: float = 0.0, total: float = 0.0) -> None:
        """After the transcription (a second pass, the speakers): progress stays at 99.9 % and
        the heartbeat goes on, every 2 s as usual (a value short of the total keeps the
        throttle). Takes a progress callback's arguments, and ignores them."""
        self.progress(0.999, 1.0)

    def cancelled(self) -> bool:
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise JobTimeLimitExceeded()
        if not self._cancel and now - self._last_read >= PROGRESS_INTERVAL_SECONDS:
            self._last_read = now
            try:
                flag = (
                    TranscriptionJob.objects.filter(pk=self.job.pk)
                    .values_list("cancel_requested", flat=True)
                    .first()
                )
                release_connection()
            except DatabaseError:
                _database_blip(self.job, "read its cancel flag")
                return self._cancel
            if flag is None:
                raise JobGone()
            self._cancel = bool(flag)
        return self._cancel


def _database_blip(job: TranscriptionJob, what: str) -> None:
    """Log a failed progress write or cancel read, and drop the connection if it is broken (the
    next query opens, or checks out, a working one)."""
    logger.warning("Job %s: could not %s; the transcription goes on", job.pk, what, exc_info=True)
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


def _finish(
    job: TranscriptionJob, status: str, *, now=None, announce: bool = True, **fields: Any
) -> None:
    """Record the job's final state; `announce=False` when the caller announces it on the live
    feed itself, last in its transaction (the feed's order lock is held until the commit)."""
    now = now or timezone.now()
    job.status = status
    job.finished_at = now
    if job.started_at:
        job.processing_seconds = (now - job.started_at).total_seconds()
    for name, value in fields.items():
        setattr(job, name, value)
    job.save(update_fields=["status", "finished_at", "processing_seconds", "updated_at", *fields])
    if status in (JobStatus.FAILED, JobStatus.CANCELLED):
        usage_refund_if_never_started(job)
    dispatch_waiting_on_commit(job.organisation_id)  # its place goes to a waiting job
    if announce:
        events.job_changed(job)


def _organisation_active(job: TranscriptionJob) -> bool:
    """A plain read (no lock): the job's row is locked, the organisation's only ever after it."""
    return Organisation.objects.filter(pk=job.organisation_id, is_active=True).exists()


def _locked_active(job: TranscriptionJob) -> TranscriptionJob | None:
    return (
        TranscriptionJob.objects.select_for_update()
        .filter(pk=job.pk, status__in=ACTIVE_STATUSES)
        .first()
    )


@transaction.atomic
def _complete(
    job: TranscriptionJob,
    result: TranscriptionResult,
    *,
    processing_seconds: float,
    quality: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    redaction_done: dict[str, Any] | None = None,
    audio: _RedactedAudio | None = None,
    diarization: dict[str, Any] | None = None,
) -> str:
    locked = _locked_active(job)
    if locked is None:
        return "discarded"
    if locked.cancel_requested or not _organisation_active(locked):
        _finish(locked, JobStatus.CANCELLED)
        return "cancelled"
    data = data if data is not None else result.to_dict()
    text = str(data["text"])  # the redacted text, when redaction was asked
    Transcript.objects.create(
        job=locked,
        text=text,
        language=result.language,
        language_probability=result.language_probability,
        duration=result.duration,
        segments=data["segments"],
        # Timed words when there are any; else the text's (word timestamps off).
        word_count=count_words(data["segments"], text),
    )
    audio_fields: dict[str, Any] = {}
    if audio is not None and locked.legal_hold_at is not None:
        # Held since it was queued: the upload is evidence and stays; the copy goes.
        transaction.on_commit(lambda: discard_guarded_file(audio.key, audio.guard), robust=True)
        if redaction_done is not None:
            redaction_done = {"entities": redaction_done["entities"], "audio": "kept_legal_hold"}
    elif audio is not None:
        if not unguard_file(audio.guard):
            raise RedactedAudioLost(
                "The redacted copy of the audio was lost before the job completed: "
                "transcribe it again."
            )
        # The original (holding what was redacted) goes once this commits; a failed delete is
        # retried by the pending-deletion sweep.
        delete_files_on_commit([locked.audio_key])
        audio_fields = {
            "audio_key": audio.key,
            "container": "flac",
            "codec": "flac",
            "size_bytes": audio.size_bytes,
        }
    info = result.engine_info
    _finish(
        locked,
        JobStatus.COMPLETED,
        announce=False,
        progress=100.0,
        engine=str(info.get("engine", ""))[:32],
        model_used=str(info.get("model_profile", ""))[:32],
        model_sha256=str(info.get("model_sha256", ""))[:64],
        engine_settings={**info, "engine_seconds": round(processing_seconds, 3)},
        duration_seconds=locked.duration_seconds or result.duration,
        error_code="",
        error_message="",
        quality=quality,
        quality_warnings=None if quality is None else warning_count(quality),
        quality_summary=None if quality is None else quality_summary(quality)[:300],
        redaction=redaction_done,
        diarization=diarization,
        **audio_fields,
    )
    observed = (locked.engine, locked.model_used, float(locked.duration_seconds or 0))

    def observe() -> None:
        # After the commit: a completion rolled back and retried must not count twice.
        observe_transcription(*observed, processing_seconds)
        if quality is not None:
            observe_quality(observed[1], quality)
        if redaction_done is not None:
            observe_redaction(redaction_done)

    transaction.on_commit(observe, robust=True)
    events.job_finished(locked)
    events.job_changed(locked)
    return "completed"


@transaction.atomic
def _fail(job: TranscriptionJob, code: str, message: str) -> None:
    locked = _locked_active(job)
    if locked is None:
        return
    _finish(locked, JobStatus.FAILED, announce=False, error_code=code[:64], error_message=message)
    events.job_finished(locked)
    events.job_changed(locked)


@transaction.atomic
def _stop_cancelled(job: TranscriptionJob) -> str:
    locked = _locked_active(job)
    if locked is not None:
        _finish(locked, JobStatus.CANCELLED)
    return "cancelled"


def job_fail_unexpectedly(*, job_id: str, code: str, message: str) -> None:
    """Mark an active job failed after an error the task could not handle (before dead-letter)."""
    job = TranscriptionJob.objects.filter(pk=job_id).first()
    if job is not None:
        _fail(job, code, message)


def _dead_letter_poison(job: TranscriptionJob) -> None:
    from workers.base import dead_letter

    payload = {
        "task_name": "workers.transcription.transcribe_job",
        "task_id": f"job-{job.pk}",
        "queue": settings.TRANSCRIPTION_QUEUE,
        "args": [str(job.pk)],
        "kwargs": {},
        "exception_type": "apps.audio_jobs.processing.PoisonMessage",
        "error": job.error_message,
        "traceback": "",
        "attempts": job.attempts - 1,
        "request_id": "",
    }
    transaction.on_commit(lambda: dead_letter(payload), robust=True)
