"""Writes of audio jobs in the web tier: create (multipart or presigned), cancel, delete, dispatch.

A job is created only after its audio passed validation and was stored under a server-chosen key;
if anything fails after storing and before the job's row is committed, the stored file is
deleted, so no orphan is left. The task is published only after the job's row is committed; if
the broker (or the database) fails then, the job stays `queued` with no `dispatched_at` and the
sweeper publishes it later (nothing is lost, the audio included).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, history_record_updates
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError
from apps.core.storage import (
    delete_files_at,
    delete_files_on_commit,
    discard_file,
    discard_guarded_file,
    guard_file,
    unguard_file,
)
from workers.engines.base import merge_hotwords

from . import events, media, selectors, storage
from .holds import LegalHold, held_jobs_count, refuse_if_held
from .models import (
    ACTIVE_STATUSES,
    AudioUsage,
    JobPriority,
    JobStatus,
    TranscriptionJob,
    Upload,
)

logger = logging.getLogger(__name__)


class QuotaExceeded(ApplicationError):
    status_code = 402
    code = "quota_exceeded"


class OrganisationInactive(QuotaExceeded):
    """The organisation was deactivated (its use refused like an exhausted quota: a job created
    meanwhile is refused, a job validated meanwhile fails)."""

    status_code = 403
    code = "organisation_inactive"


@dataclass(frozen=True)
class JobOptions:
    language: str = ""
    model_profile: str = ""
    task: str = "transcribe"
    word_timestamps: bool = True
    initial_prompt: str = ""
    hotwords: str = ""
    priority: int = JobPriority.NORMAL
    # PII redaction asked for by the request; the organisation's policy is added to it.
    redact_pii: tuple[str, ...] = ()
    redact_pii_audio: bool = False
    redact_pii_sub: str = ""  # empty: "entity_name" (or, transcribing again, the source's)
    quality_rerun: bool = False
    diarize: bool = False
    speakers_expected: int | None = None
    max_speakers: int | None = None


# ---- quota -------------------------------------------------------------------------------------
def quota_minutes(organisation) -> int | None:
    return settings.PLAN_AUDIO_MINUTES_PER_MONTH.get(
        organisation.plan, settings.PLAN_AUDIO_MINUTES_PER_MONTH.get("free")
    )


def quota_check(*, organisation, duration_seconds: float = 0.0) -> None:
    """Refuse work that would take the organisation past its monthly audio minutes, and any
    work of a deactivated organisation (checked again here, under the organisation's lock: a
    request past its access check when an operator deactivated it must not add a job)."""
    if not organisation.is_active:
        raise OrganisationInactive("This organisation has been deactivated.")
    limit = quota_minutes(organisation)
    if limit is None:
        return
    used = selectors.audio_seconds_used(organisation=organisation, since=selectors.month_start())
    remaining = limit * 60 - used
    if remaining <= 0 or duration_seconds > remaining:
        raise QuotaExceeded(
            f"This organisation has used its {limit} audio minutes for this month"
            + (" (this file would exceed them)." if remaining > 0 else "."),
            details={
                "limit_minutes": limit,
                "used_minutes": round(used / 60, 2),
                "requested_minutes": round(duration_seconds / 60, 2),
                "resets_at": _next_month(selectors.month_start()).isoformat(),
            },
        )


def usage_record(*, job: TranscriptionJob) -> None:
    """Count the job's audio against its organisation's quota for good (`AudioUsage`: deleting
    the job later gives nothing back). Call it in the transaction that writes the job's duration,
    under `organisation_lock_for_quota`; a second call for the job replaces its row."""
    if job.duration_seconds is None:
        return
    AudioUsage.objects.update_or_create(
        job_id=job.pk,
        defaults={
            "organisation_id": job.organisation_id,
            "seconds": job.duration_seconds,
            "job_created_at": job.created_at,
        },
    )


def organisation_lock_for_quota(organisation_id):
    """Lock the organisation's row while its usage is read and a job's duration written, so jobs
    created or validated at once cannot all fit in the same remaining minutes. Returns the row
    (its plan as it is now), or None when the organisation was deleted meanwhile.

    FOR NO KEY UPDATE: it serialises these quota checks with one another and waits for an
    organisation being deleted (FOR UPDATE), but not for inserts that merely reference the
    organisation (their foreign-key check takes KEY SHARE), nor they for it. Callers lock any
    child row (the job, the upload ticket) before it and none after: the order
    `organisation_delete` takes them.
    """
    from apps.accounts.models import Organisation

    return Organisation.objects.select_for_update(no_key=True).filter(pk=organisation_id).first()


def _next_month(start):
    return (start + timedelta(days=32)).replace(day=1)


# ---- validation --------------------------------------------------------------------------------
def probe_audio(path: str | Path) -> media.ProbeResult:
    """Sniff, probe and decode the file (bounded in time and memory); see apps/audio_jobs/media."""
    return media.probe_media(
        path,
        max_duration_seconds=settings.AUDIO_MAX_DURATION_SECONDS,
        decode_timeout_seconds=settings.AUDIO_PROBE_TIMEOUT_SECONDS,
    )


def probe_upload(path: str | Path) -> media.ProbeResult:
    """`probe_audio` for the web tier: a bad file becomes a 4xx with an actionable message."""
    try:
        return probe_audio(path)
    except media.MediaError as exc:
        raise ApplicationError(exc.message, code=exc.code, status_code=exc.status_code) from exc


# ---- time limits -------------------------------------------------------------------------------
def time_limits(
    duration_seconds: float | None, *, passes: int = 1, diarize: bool = False
) -> tuple[int, int]:
    """(soft, hard) seconds for a job's transcription of this much audio; `passes` 2 for a job
    that may be transcribed twice (`quality_rerun`); `diarize` adds the speakers' labelling."""
    duration = duration_seconds or settings.AUDIO_MAX_DURATION_SECONDS
    # Each pass loads its model (the base allowance) and transcribes the whole file.
    soft = passes * (
        settings.TRANSCRIPTION_TIME_LIMIT_BASE
        + math.ceil(duration * settings.TRANSCRIPTION_TIME_LIMIT_FACTOR)
    )
    if diarize:
        soft += math.ceil(duration * settings.DIARIZATION_TIME_LIMIT_FACTOR)
    hard = soft + 60
    ceiling = settings.CELERY_MAX_TASK_TIME_LIMIT
    # Under a ceiling of a minute or less (tests), the soft limit still comes first and is
    # never negative: -45 s failed every job at once with `time_limit`.
    return min(soft, max(ceiling - 60, ceiling // 2)), min(hard, ceiling)


def job_time_limits(job: TranscriptionJob) -> tuple[int, int]:
    """`time_limits` for `job`, with its options."""
    return time_limits(job.duration_seconds, passes=job_passes(job), diarize=job.diarize)


def job_passes(job: TranscriptionJob) -> int:
    """Transcriptions a job may need: 2 with `quality_rerun` when a larger model exists for its
    first one (processing._rerun_if_flagged), else 1."""
    if not job.quality_rerun:
        return 1
    from workers.engines.errors import ProfileError
    from workers.engines.models import choose_profile, larger_profile

    try:
        first = choose_profile(
            job.language or None,
            job.model_profile or None,
            english_profile=settings.WHISPER_DEFAULT_PROFILE,
        )
    except ProfileError:
        return 1
    return 2 if larger_profile(first, job.language or None) else 1


# ---- create ------------------------------------------------------------------------------------
def _replay(organisation, idempotency_key: str) -> TranscriptionJob | None:
    return selectors.job_by_idempotency_key(organisation=organisation, key=idempotency_key)


def job_create_from_file(
    *,
    organisation,
    user,
    path: str | Path,
    original_filename: str,
    size_bytes: int,
    options: JobOptions,
    idempotency_key: str = "",
) -> tuple[TranscriptionJob, bool]:
    """Validate, store and queue an uploaded file. Returns (job, created).

    The stored file is discarded when the job's row is not committed, and only then: once it is,
    the file is the job's audio, whatever happens after (the publish hook is robust, and a job
    it could not publish is published by the sweeper). A process killed between storing and
    committing runs no except clause: the deletion committed before storing (`guard_file`,
    called off by the job's transaction) deletes the file an hour later.
    """
    if existing := _replay(organisation, idempotency_key):
        return existing, False
    quota_check(organisation=organisation)
    probe = probe_upload(path)
    quota_check(organisation=organisation, duration_seconds=probe.duration_seconds)
    job_id = uuid.uuid4()

    def store(audio: _GuardedAudio) -> None:
        audio.key = storage.store_file(path, audio.key)

    def create(audio: _GuardedAudio) -> tuple[TranscriptionJob, bool]:
        job = _create_job(
            job_id=job_id,
            organisation=organisation,
            user=user,
            options=options,
            idempotency_key=idempotency_key,
            audio_key=audio.key,
            original_filename=original_filename,
            size_bytes=size_bytes,
            container=probe.format_name,
            codec=probe.codec,
            duration_seconds=probe.duration_seconds,
            audio_validated=True,
        )
        return job, True

    return _with_guarded_audio(
        storage.audio_key(organisation.pk, job_id, probe.format_name),
        create,
        store=store,
        replay=lambda: _replay(organisation, idempotency_key),
    )


@dataclass
class _GuardedAudio:
    key: str  # where the job's audio is (or will be) stored


def _with_guarded_audio(
    key: str,
    create: Callable[[_GuardedAudio], tuple[TranscriptionJob, bool]],
    *,
    replay: Callable[[], TranscriptionJob | None],
    store: Callable[[_GuardedAudio], None] | None = None,
) -> tuple[TranscriptionJob, bool]:
    """`create` the job in a transaction, its audio written under `key` (by `store` before the
    transaction, or by `create` in it, which set `audio.key` if the storage names it otherwise).

    The audio's deletion is committed first (`guard_file`) and called off by the job's
    transaction, so a process killed in between leaves no orphan; any failure before the commit
    discards it at once. A unique-key failure is a concurrent request with the same
    idempotency key that won the race: `replay` finds its job (or refuses the key)."""
    audio = _GuardedAudio(key)
    guard = guard_file(key)
    committed = False

    def mark_committed() -> None:
        nonlocal committed
        committed = True

    try:
        if store is not None:
            store(audio)
        with transaction.atomic():
            # Registered before the job's publish hook, so it runs first after the commit.
            transaction.on_commit(mark_committed)
            _unguard_or_refuse(guard)
            return create(audio)
    except BaseException as exc:
        if committed:
            raise
        discard_guarded_file(audio.key, guard)  # a delete of a key never written is a no-op
        if isinstance(exc, IntegrityError) and (existing := replay()) is not None:
            return existing, False
        raise


def _unguard_or_refuse(guard) -> None:
    """Call off the stored file's guard in the job's transaction, or refuse the job if the guard
    came due meanwhile (storing and committing took longer than GUARD_DELAY) and the sweep
    deleted the file: a job must never point at audio that is gone."""
    if not unguard_file(guard):
        raise ApplicationError(
            "Storing the audio took too long and it was discarded: send it again.",
            code="upload_interrupted",
            status_code=503,
        )


def job_create_from_upload(
    *,
    organisation,
    user,
    upload_id: Any,
    options: JobOptions,
    idempotency_key: str = "",
) -> tuple[TranscriptionJob, bool]:
    """Queue a job for an object uploaded with a presigned POST, after checking the object.

    The storage is asked for the object (HEAD) under the exact key the ticket allowed; a missing,
    empty or oversized object is refused. The worker decodes and validates the audio itself
    before transcribing (a decode in the web tier could take minutes for a large file).

    The job's audio is a server-side copy under the job's own key, never the ticket's key: the
    presigned form stays usable until its policy expires, so whatever the client POSTs to the
    ticket's key after this cannot become (or replace) a job's audio. The ticket's object is
    deleted after the commit and once more when the form can no longer be used. The copy is
    discarded when the job's row is not committed, as in `job_create_from_file`.
    """
    if existing := _replay(organisation, idempotency_key):
        return existing, False
    quota_check(organisation=organisation)
    job_id = uuid.uuid4()
    return _with_guarded_audio(
        storage.audio_key(organisation.pk, job_id, ""),
        lambda audio: _consume_upload(
            job_id=job_id,
            key=audio.key,
            organisation=organisation,
            user=user,
            upload_id=upload_id,
            options=options,
            idempotency_key=idempotency_key,
        ),
        replay=lambda: _replay(organisation, idempotency_key),
    )


@transaction.atomic
def _consume_upload(
    *,
    job_id: uuid.UUID,
    key: str,
    organisation,
    user,
    upload_id: Any,
    options: JobOptions,
    idempotency_key: str,
) -> tuple[TranscriptionJob, bool]:
    upload = (
        Upload.objects.select_for_update().filter(organisation=organisation, pk=upload_id).first()
    )
    if upload is None:
        raise ApplicationError("No such upload.", code="upload_not_found", status_code=404)
    if upload.status != Upload.Status.PENDING:
        # A retry of the request that consumed it (it held the lock until it committed).
        if existing := _replay(organisation, idempotency_key):
            return existing, False
        raise ConflictError("This upload has already been used by a job.", code="upload_used")
    if timezone.now() > upload_usable_until(upload):
        raise ApplicationError(
            f"This upload ticket expired at {upload.expires_at.isoformat()}: ask for a new one "
            "(POST /api/v1/uploads) and upload the file again.",
            code="upload_expired",
            status_code=410,
            details={"expires_at": upload.expires_at.isoformat()},
        )
    # The version checked here is the one copied (its ETag pins every part of the copy).
    etag = storage.object_etag(upload.key)
    size = storage.stored_size(upload.key)
    if size is None:
        raise ApplicationError(
            "Nothing was uploaded for this ticket yet: POST the file to the presigned URL first.",
            code="upload_missing",
        )
    if size == 0 or size > upload.max_size:
        # The ticket stays pending (the client may upload again before it expires); should this
        # delete fail, the abandoned-upload sweep deletes the object with the unused ticket.
        discard_file(upload.key)
        raise ApplicationError(
            f"The uploaded object is {size} bytes; it must be between 1 and "
            f"{upload.max_size} bytes.",
            code="upload_size_invalid",
            status_code=413 if size else 400,
        )
    # What the job reads is this copy, checked again: the object may have been replaced since the
    # HEAD (the form is still valid), and the copy is what was checked.
    changed = ApplicationError(
        "The uploaded object changed while it was being checked: upload it again.",
        code="upload_changed",
        status_code=409,
    )
    try:
        key = storage.copy_file(upload.key, key, if_match=etag)
    except storage.SourceChanged:
        raise changed from None
    size = storage.stored_size(key) or 0
    if size == 0 or size > upload.max_size:
        raise changed
    upload.status = Upload.Status.CONSUMED
    upload.save(update_fields=["status", "updated_at"])
    # The ticket's object now, and again once its form can no longer be used (a client may POST
    # it again until then, and nothing would track that object otherwise).
    delete_files_on_commit([upload.key])
    delete_files_at([upload.key], at=upload_usable_until(upload))
    job = _create_job(
        job_id=job_id,
        organisation=organisation,
        user=user,
        options=options,
        idempotency_key=idempotency_key,
        audio_key=key,
        original_filename=upload.filename,
        size_bytes=size,
        container="",
        codec="",
        duration_seconds=None,
        audio_validated=False,
    )
    return job, True


class AudioMissing(ConflictError):
    code = "audio_missing"


def job_retranscribe(
    *,
    organisation,
    user,
    source_id: Any,
    options: JobOptions,
    idempotency_key: str = "",
    api_key: Any = None,
    meta: Any = None,
) -> tuple[TranscriptionJob, bool]:
    """Queue a new job that transcribes a finished job's stored audio again, with new options.
    Returns (job, created).

    The source must be the organisation's (404) and final (409 `job_active`: cancel it first);
    its audio must still be stored (409 `audio_missing`: retention deleted it). The new job gets
    its own server-side copy under its own key, never the source's key (deleting either job
    deletes only its own file), guarded like an upload: the deletion committed before copying is
    called off by the job's transaction, so a crash leaves no orphan. The audio was validated
    once (duration, container, codec are the source's); its minutes count again, checked under
    the organisation's lock, since this is a new transcription.

    The source's row is locked (FOR NO KEY UPDATE, before the organisation's, the order every
    writer takes them) while its audio is copied: retention skips a locked job, and a concurrent
    delete waits, so the file cannot go from under the copy.
    """
    source = selectors.job_get(organisation=organisation, job_id=source_id)
    if existing := _replay_retranscription(organisation, idempotency_key, source):
        return existing, False
    _check_retranscribable(source)
    quota_check(organisation=organisation, duration_seconds=source.duration_seconds or 0.0)
    job_id = uuid.uuid4()

    def create(audio: _GuardedAudio) -> tuple[TranscriptionJob, bool]:
        locked = (
            TranscriptionJob.objects.select_for_update(no_key=True)
            .filter(organisation=organisation, pk=source.pk)
            .first()
        )
        if locked is None:
            raise NotFoundError("No such job.", code="job_not_found")
        _check_retranscribable(locked)
        try:
            audio.key = storage.copy_file(locked.audio_key, audio.key)
        except FileNotFoundError:
            raise _audio_missing(locked) from None
        job = _create_job(
            job_id=job_id,
            organisation=organisation,
            user=user,
            options=_with_source_redaction(options, locked),
            idempotency_key=idempotency_key,
            retranscribed_from=locked,
            audio_key=audio.key,
            original_filename=locked.original_filename,
            size_bytes=locked.size_bytes,
            container=locked.container,
            codec=locked.codec,
            duration_seconds=locked.duration_seconds,
            audio_validated=locked.audio_validated,
        )
        audit_record(
            action=AuditAction.JOB_RETRANSCRIBED,
            actor=user,  # a user, or an API key's principal (then `api_key` is named)
            api_key=api_key,
            organisation=organisation,
            target=job,
            target_repr=f"Job {job.pk}",
            meta=meta,
            # Never the prompt: it may hold names (the job's history leaves it out too).
            metadata={
                "job_id": str(job.pk),
                "retranscribed_from": str(locked.pk),
                "model": options.model_profile,
                "language": options.language,
                "task": options.task,
            },
        )
        return job, True

    return _with_guarded_audio(
        storage.audio_key(organisation.pk, job_id, source.container),
        create,
        replay=lambda: _replay_retranscription(organisation, idempotency_key, source),
    )


def _with_source_redaction(options: JobOptions, source: TranscriptionJob) -> JobOptions:
    """Transcribing again never undoes a redaction: the source's policies (and audio
    redaction) are added to the request's, and its substitution kept unless one is asked."""
    return dataclasses.replace(
        options,
        redact_pii=tuple(sorted({*options.redact_pii, *(source.redact_pii or [])})),
        redact_pii_audio=options.redact_pii_audio or source.redact_pii_audio,
        redact_pii_sub=options.redact_pii_sub or source.redact_pii_sub,
    )


def _replay_retranscription(
    organisation, idempotency_key: str, source: TranscriptionJob
) -> TranscriptionJob | None:
    """The job an earlier request with this key made, if it transcribed `source` again; a key
    used for anything else is refused (409), never answered with another job."""
    existing = _replay(organisation, idempotency_key)
    if existing is not None and existing.retranscribed_from_id != source.pk:
        raise ConflictError(
            "This Idempotency-Key was used for another request; use a new key.",
            code="idempotency_key_reused",
            details={"job_id": str(existing.pk)},
        )
    return existing


def _check_retranscribable(job: TranscriptionJob) -> None:
    if not job.is_final:
        raise ConflictError(
            f"The job is {job.status}: wait until it ends, or cancel it, before transcribing its "
            "audio again.",
            code="job_active",
        )
    if not job.audio_key or storage.stored_size(job.audio_key) is None:
        raise _audio_missing(job)


def _audio_missing(job: TranscriptionJob) -> ApplicationError:
    days = settings.AUDIO_RETENTION_DAYS
    why = f" (the audio of a job is deleted {days} days after it ends)" if days > 0 else ""
    return AudioMissing(
        f"This job's audio is no longer stored{why}, so it cannot be transcribed again: upload "
        "the file again (POST /api/v1/jobs).",
        details={"job_id": str(job.pk)},
    )


@transaction.atomic
def _create_job(
    *, job_id, organisation, user, options: JobOptions, **fields: Any
) -> TranscriptionJob:
    """Insert a queued job, held to the quota under the organisation's lock: the caller's checks
    ran before it, and requests checked at once would all fit in the same remaining minutes.
    A presigned upload's duration is unknown here (the worker checks it once known)."""
    locked = organisation_lock_for_quota(organisation.pk)
    if locked is None:
        raise NotFoundError("This organisation no longer exists.", code="organisation_not_found")
    quota_check(organisation=locked, duration_seconds=fields.get("duration_seconds") or 0.0)
    now = timezone.now()
    # The organisation's redaction is a floor no request can lower (read under its lock).
    redact_pii = sorted({*options.redact_pii, *(locked.redact_pii or [])})
    if options.redact_pii_audio and not redact_pii:
        raise ApplicationError(
            "The request is invalid.",
            code="validation_error",
            details={
                "redact_pii_audio": [
                    "Name the entity types to redact in `redact_pii` (the organisation redacts "
                    "none by default)."
                ]
            },
        )
    job = TranscriptionJob.objects.create(
        id=job_id,
        organisation=organisation,
        created_by=user if getattr(user, "pk", None) and user.is_authenticated else None,
        status=JobStatus.QUEUED,
        queued_at=now,
        language=options.language,
        model_profile=options.model_profile,
        task=options.task,
        word_timestamps=options.word_timestamps,
        initial_prompt=options.initial_prompt,
        # The job's own terms, then the organisation's (read under its lock).
        hotwords=merge_hotwords(options.hotwords, locked.hotwords),
        priority=options.priority,
        redact_pii=redact_pii,
        redact_pii_audio=options.redact_pii_audio or (bool(redact_pii) and locked.redact_pii_audio),
        redact_pii_sub=options.redact_pii_sub or "entity_name",
        quality_rerun=options.quality_rerun,
        diarize=options.diarize,
        speakers_expected=options.speakers_expected if options.diarize else None,
        max_speakers=options.max_speakers if options.diarize else None,
        **fields,
    )
    usage_record(job=job)
    events.job_changed(job)
    # Robust: the job is committed whatever the publish does (job_dispatch logs a broker
    # failure; a database error raised by it is logged here), and beat's stale-queue sweeper
    # publishes a job left without `dispatched_at`.
    transaction.on_commit(lambda: job_dispatch(job_id=job.pk), robust=True)
    return job


def upload_create(*, organisation, user, filename: str, size_bytes: int) -> tuple[Upload, dict]:
    """A presigned POST ticket for one object under a server-chosen key."""
    if not storage.supports_presigned_upload():
        raise ApplicationError(
            "Direct uploads need S3-compatible storage (STORAGE_BACKEND=s3); send the file "
            "to POST /api/v1/jobs instead.",
            code="presigned_upload_unavailable",
            status_code=409,
        )
    limit = settings.AUDIO_MAX_UPLOAD_BYTES
    if size_bytes > limit:
        from .uploads import too_large

        raise too_large(limit)
    quota_check(organisation=organisation)
    upload_id = uuid.uuid4()
    key = storage.upload_key(organisation.pk, upload_id)
    expires_in = settings.PRESIGNED_UPLOAD_EXPIRY_SECONDS
    upload = Upload.objects.create(
        id=upload_id,
        organisation=organisation,
        created_by=user if getattr(user, "pk", None) else None,
        key=key,
        filename=filename[:255],
        max_size=limit,
        expires_at=timezone.now() + timedelta(seconds=expires_in),
    )
    return upload, storage.presigned_post(key, max_size=limit, expires_in=expires_in)


# How long one run of the abandoned-ticket sweep may take (it runs hourly; the rest waits).
ABANDONED_SWEEP_BUDGET_SECONDS = 300.0


def upload_usable_until(upload: Upload):
    """Until when a ticket may become a job: its expiry, plus a grace for an upload that started
    in time but finished late. Past it, the ticket is refused and swept with its object."""
    return upload.expires_at + timedelta(seconds=settings.PRESIGNED_UPLOAD_GRACE_SECONDS)


@transaction.atomic
def upload_delete(*, upload: Upload) -> None:
    """Delete a ticket; an unused one's object too (after the commit, and again once its form can
    no longer be used: `_delete_ticket_objects_again`). A consumed ticket's object
    was copied to its job's key and is deleted on its own schedule (`_consume_upload`); before
    that copy existed it was the job's audio itself, which stays with the job."""
    locked = Upload.objects.select_for_update().filter(pk=upload.pk).first()
    if locked is None:
        return
    locked.delete()
    if locked.status == Upload.Status.PENDING:
        delete_files_on_commit([locked.key])
        _delete_ticket_objects_again([locked])


def _delete_ticket_objects_again(uploads) -> None:
    """Pending tickets being deleted (their objects go after the commit): delete their keys
    again once their forms can no longer be used, as `_consume_upload` does. A client may still
    POST a form until then (or finish one started before), and nothing would track that object
    otherwise. A ticket already past that time needs nothing more."""
    now = timezone.now()
    for upload in uploads:
        if (usable_until := upload_usable_until(upload)) > now:
            delete_files_at([upload.key], at=usable_until)


def uploads_delete_abandoned(
    *, now=None, batch: int = 1000, budget_seconds: float = ABANDONED_SWEEP_BUDGET_SECONDS
) -> int:
    """Delete pending upload tickets past their usable time, and their objects (after commit).

    Hourly, from the retention task: batches of `batch` tickets, each its own transaction, until
    none is left or `budget_seconds` have passed (the next run goes on). A ticket being consumed
    right now is locked and skipped; once it is deleted, a late consume answers 404.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.PRESIGNED_UPLOAD_GRACE_SECONDS)
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        deleted = _uploads_delete_abandoned_batch(cutoff=cutoff, limit=batch)
        total += deleted
        if deleted < batch or time.monotonic() >= deadline:
            break
    if total:
        logger.info("Deleted %d abandoned upload ticket(s) and their objects", total)
    return total


@transaction.atomic
def _uploads_delete_abandoned_batch(*, cutoff, limit: int) -> int:
    abandoned = list(
        Upload.objects.select_for_update(skip_locked=True)
        .filter(status=Upload.Status.PENDING, expires_at__lt=cutoff)
        .order_by()
        .values_list("pk", "key")[:limit]
    )
    if not abandoned:
        return 0
    Upload.objects.filter(pk__in=[pk for pk, _key in abandoned]).delete()
    delete_files_on_commit(key for _pk, key in abandoned)
    return len(abandoned)


# ---- dispatch ----------------------------------------------------------------------------------
# Fair use of the shared transcription queue: an organisation has at most its plan's
# PLAN_ACTIVE_JOBS jobs published (on the queue or running) at once. The others stay `queued`
# and unpublished ("waiting") until one of its jobs ends (`dispatch_waiting`, after the commit of
# the job's end) or the sweeper finds room: one organisation sending 10,000 files cannot put
# them ahead of everybody else's, and `priority` orders an organisation's own jobs.
DISPATCH_LOCK_NAMESPACE = 0x4C584450  # "LXDP": pg_advisory_xact_lock(namespace, organisation)


def active_jobs_limit(plan: str) -> int:
    """Jobs of an organisation on `plan` that may be published at once (0: no limit)."""
    limits = settings.PLAN_ACTIVE_JOBS
    return int(limits.get(plan, limits.get("free", 0)) or 0)


def _dispatch_lock(organisation_id: Any) -> None:
    """Serialise the organisation's dispatch decisions until the transaction ends, so that two
    dispatches cannot both take its last place. SQLite (embedded mode) serialises writers."""
    if connection.vendor != "postgresql":
        return
    key = int.from_bytes(uuid.UUID(str(organisation_id)).bytes[:4], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [DISPATCH_LOCK_NAMESPACE, key])


def jobs_published(organisation_id: Any) -> QuerySet[TranscriptionJob]:
    """The organisation's jobs that hold a place: published and waiting on the queue, or
    running."""
    return TranscriptionJob.objects.filter(organisation_id=organisation_id).filter(
        Q(status=JobStatus.PROCESSING) | Q(status=JobStatus.QUEUED, dispatched_at__isnull=False)
    )


PUBLISHED, WAITING, GONE, NOT_PUBLISHED = "published", "waiting", "gone", "not_published"


def _dispatch(job_id: Any, *, again: bool) -> str:
    """Take a place for the job under its organisation's dispatch lock (`dispatched_at` set,
    committed), then publish after the commit (no task is published inside a transaction);
    a publish that fails gives the place back."""
    from workers.transcription import transcribe_job

    with transaction.atomic():
        job = (
            TranscriptionJob.objects.select_related("organisation")
            .filter(pk=job_id, status=JobStatus.QUEUED)
            .first()
        )
        if job is None:
            return GONE
        limit = active_jobs_limit(job.organisation.plan)
        if job.dispatched_at is None:
            if limit:
                _dispatch_lock(job.organisation_id)
                job.refresh_from_db(fields=["status", "dispatched_at"])
                if job.status != JobStatus.QUEUED:
                    return GONE
            if job.dispatched_at is None:
                if limit and jobs_published(job.organisation_id).count() >= limit:
                    return WAITING
                mark = timezone.now()
                TranscriptionJob.objects.filter(pk=job.pk).update(dispatched_at=mark)
                taken = True
            elif not again:
                return PUBLISHED  # another dispatch published it meanwhile
            else:
                mark, taken = job.dispatched_at, False
        elif not again:
            return PUBLISHED
        else:
            mark, taken = job.dispatched_at, False
    soft, hard = job_time_limits(job)
    try:
        transcribe_job.apply_async(
            args=[str(job.pk)],
            queue=settings.TRANSCRIPTION_QUEUE,
            priority=job.priority,
            soft_time_limit=soft,
            time_limit=hard,
            headers={"job_id": str(job.pk)},
        )
    except Exception:
        logger.warning("Could not publish job %s; the sweeper will retry", job.pk, exc_info=True)
        if taken:  # give the place back: the job is "never published" for the sweeper again
            TranscriptionJob.objects.filter(pk=job.pk, dispatched_at=mark).update(
                dispatched_at=None
            )
        else:  # keep the place, and be due for the sweeper's next republish
            due = timezone.now() - timedelta(seconds=settings.JOB_REDISPATCH_AFTER_SECONDS + 1)
            TranscriptionJob.objects.filter(pk=job.pk, dispatched_at=mark).update(dispatched_at=due)
        return NOT_PUBLISHED
    if not taken:
        TranscriptionJob.objects.filter(pk=job.pk).update(dispatched_at=timezone.now())
    return PUBLISHED


def job_dispatch(*, job_id: Any, again: bool = False) -> bool:
    """Publish the job's task; True if it was published.

    A job that was never published waits instead while its organisation has its plan's
    PLAN_ACTIVE_JOBS published (`dispatch_waiting` publishes it when one ends). `again`:
    publish a job that was published already once more (a message that may have been lost, an
    operator's decision), without taking a new place. A broker or database failure is logged;
    the sweeper publishes the job later.
    """
    try:
        return _dispatch(job_id, again=again) == PUBLISHED
    except DatabaseError:
        logger.warning("Could not dispatch job %s; the sweeper will retry", job_id, exc_info=True)
        return False


WAITING_BATCH = 500  # jobs one `dispatch_waiting` call publishes at most without a limit


def waiting_jobs(organisation_id: Any) -> QuerySet[TranscriptionJob]:
    """The organisation's jobs that wait for a place, in the order they get one."""
    return TranscriptionJob.objects.filter(
        organisation_id=organisation_id, status=JobStatus.QUEUED, dispatched_at__isnull=True
    ).order_by("priority", "created_at", "pk")


def dispatch_waiting(*, organisation_id: Any) -> int:
    """Publish the organisation's waiting jobs while it has room (highest priority, then oldest
    first; at most its limit, or `WAITING_BATCH` without one); returns how many. Called after
    the commit of a job's end, and by the sweeper."""
    from apps.accounts.models import Organisation

    plan = Organisation.objects.filter(pk=organisation_id).values_list("plan", flat=True).first()
    if plan is None:
        return 0
    batch = active_jobs_limit(plan) or WAITING_BATCH
    published = 0
    try:
        candidates = list(waiting_jobs(organisation_id).values_list("pk", flat=True)[:batch])
        for job_id in candidates:
            outcome = _dispatch(job_id, again=False)
            if outcome == PUBLISHED:
                published += 1
            elif outcome in (WAITING, NOT_PUBLISHED):
                break  # no room (or no broker): the next end or the sweeper goes on
    except DatabaseError:
        logger.warning("Could not dispatch the waiting jobs of %s", organisation_id)
    return published


def _organisations_with_room(since: datetime, *, limit: int = 500) -> list[Any]:
    """Organisations with jobs waiting since before `since` and a free place, in random order
    (every one gets its turn, however many there are)."""
    from apps.accounts.models import Organisation

    waiting = set(
        TranscriptionJob.objects.filter(
            status=JobStatus.QUEUED, dispatched_at__isnull=True, created_at__lt=since
        )
        .order_by()
        .values_list("organisation_id", flat=True)
        .distinct()
    )
    if not waiting:
        return []
    plans = dict(Organisation.objects.filter(pk__in=waiting).values_list("pk", "plan"))
    held = dict(
        TranscriptionJob.objects.filter(organisation_id__in=waiting)
        .filter(
            Q(status=JobStatus.PROCESSING) | Q(status=JobStatus.QUEUED, dispatched_at__isnull=False)
        )
        .order_by()
        .values("organisation_id")
        .annotate(count=Count("id"))
        .values_list("organisation_id", "count")
    )
    room = [
        organisation_id
        for organisation_id, plan in plans.items()
        if not active_jobs_limit(plan) or held.get(organisation_id, 0) < active_jobs_limit(plan)
    ]
    random.shuffle(room)
    return room[:limit]


def dispatch_waiting_on_commit(organisation_id: Any) -> None:
    """After this transaction commits (a job of the organisation ended), fill the place."""
    transaction.on_commit(lambda: dispatch_waiting(organisation_id=organisation_id), robust=True)


def jobs_redispatch_stale() -> dict[str, int]:
    """Sweeper: publish queued jobs never (or long ago) published; requeue abandoned ones."""
    from .leases import JobLease

    now = timezone.now()
    published = republished = requeued = 0
    # Never published: a publish lost to a broker failure, or jobs waiting for room in their
    # organisation (PLAN_ACTIVE_JOBS): each organisation with room filled in its own order.
    for organisation_id in _organisations_with_room(now - timedelta(seconds=15)):
        published += dispatch_waiting(organisation_id=organisation_id)
    stale = TranscriptionJob.objects.filter(
        status=JobStatus.QUEUED,
        dispatched_at__lt=now - timedelta(seconds=settings.JOB_REDISPATCH_AFTER_SECONDS),
    )
    # Oldest first (the model's default order walked the whole table backwards).
    for job_id in list(stale.order_by("dispatched_at").values_list("pk", flat=True)[:500]):
        republished += job_dispatch(job_id=job_id, again=True)
    abandoned = TranscriptionJob.objects.filter(
        status=JobStatus.PROCESSING,
        heartbeat_at__lt=now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT_SECONDS),
    ).values_list("pk", flat=True)[:500]
    for job_id in abandoned:
        lease = JobLease(str(job_id))
        if not lease.acquire():
            continue  # a live worker still holds it
        try:
            updated = job_requeue_abandoned(job_id=job_id)
        finally:
            lease.release()
        if updated:
            requeued += 1
            job_dispatch(job_id=job_id, again=True)  # in the place it kept
    return {"published": published, "republished": republished, "requeued": requeued}


@transaction.atomic
def job_requeue_abandoned(*, job_id: Any) -> bool:
    """Put a `processing` job whose worker is gone back in the queue (the caller holds its lease
    and publishes it after, `again=True`), announced on the live feed. False if it was no longer
    processing. It keeps its organisation's place (`dispatched_at` set): given back, another job
    could take it, and the original message, restored by Redis later, would run this one past
    the organisation's limit."""
    job = (
        TranscriptionJob.objects.select_for_update()
        .filter(pk=job_id, status=JobStatus.PROCESSING)
        .first()
    )
    if job is None:
        return False
    before = copy.copy(job)
    now = timezone.now()
    job.status, job.dispatched_at, job.worker = JobStatus.QUEUED, now, ""
    TranscriptionJob.objects.filter(pk=job_id).update(
        status=JobStatus.QUEUED, dispatched_at=now, worker=""
    )
    history_record_updates([(before, job)])
    events.job_changed(job)
    return True


# ---- cancel and delete -------------------------------------------------------------------------
def usage_refund_if_never_started(job: TranscriptionJob) -> None:
    """A job that ended (failed, cancelled) before any worker started it transcribed nothing: its
    minutes go back to the quota, and stay back if it is deleted (its ledger row goes)."""
    if job.started_at is None:
        AudioUsage.objects.filter(job_id=job.pk).delete()


@transaction.atomic
def job_cancel(*, job: TranscriptionJob) -> TranscriptionJob:
    """Cancel a queued job at once; ask a processing job's worker to stop (it checks often)."""
    locked = TranscriptionJob.objects.select_for_update().filter(pk=job.pk).first()
    if locked is None:  # deleted since the caller read it
        raise NotFoundError("This job no longer exists.", code="job_not_found")
    if locked.status not in ACTIVE_STATUSES:
        raise ConflictError(
            f"The job is already {locked.status}; only queued or processing jobs can be cancelled.",
            code="job_not_cancellable",
        )
    locked.cancel_requested = True
    fields = ["cancel_requested", "updated_at"]
    if locked.status == JobStatus.QUEUED:
        locked.status = JobStatus.CANCELLED
        locked.finished_at = timezone.now()
        fields += ["status", "finished_at"]
        usage_refund_if_never_started(locked)
    locked.save(update_fields=fields)
    if locked.status == JobStatus.CANCELLED:
        dispatch_waiting_on_commit(locked.organisation_id)
        events.job_changed(locked)
    return locked


def jobs_cancel_for_organisation(*, organisation_id: Any, batch: int = 500) -> tuple[int, int]:
    """Cancel every queued job of a deactivated organisation (`organisation_inactive`, as a
    worker's claim would) and ask its running ones to stop; returns how
    many of each. In batches, each its own short transaction: the job rows are locked first (in
    id order) and the feed events written last, the order a worker's claim and progress writes
    take them, so none of them deadlocks with this, and no transaction outlives a statement
    timeout however long the queue is."""
    cancelled = stopping = 0
    while True:
        with transaction.atomic():
            rows = list(
                TranscriptionJob.objects.select_for_update()
                .filter(
                    organisation_id=organisation_id,
                    status__in=ACTIVE_STATUSES,
                    cancel_requested=False,
                )
                .order_by("pk")[:batch]
            )
            if not rows:
                return cancelled, stopping
            before = [copy.copy(job) for job in rows]
            now = timezone.now()
            queued = [job for job in rows if job.status == JobStatus.QUEUED]
            running = [job for job in rows if job.status != JobStatus.QUEUED]
            reason = {
                "error_code": "organisation_inactive",
                "error_message": "The organisation was deactivated.",
            }
            TranscriptionJob.objects.filter(pk__in=[job.pk for job in queued]).update(
                status=JobStatus.CANCELLED,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
                **reason,
            )
            TranscriptionJob.objects.filter(pk__in=[job.pk for job in running]).update(
                cancel_requested=True, updated_at=now
            )
            # Nothing was transcribed for these: their minutes go back (usage_refund_...).
            AudioUsage.objects.filter(
                job_id__in=[job.pk for job in queued if job.started_at is None]
            ).delete()
            for job in queued:
                job.status, job.finished_at = JobStatus.CANCELLED, now
                job.error_code, job.error_message = reason["error_code"], reason["error_message"]
            for job in rows:
                job.cancel_requested, job.updated_at = True, now
            # The updates sent no signal: the jobs' field history is written here.
            history_record_updates(list(zip(before, rows, strict=True)))
            for job in queued:
                events.job_changed(job)
        cancelled += len(queued)
        stopping += len(running)


@transaction.atomic
def job_delete(*, job: TranscriptionJob) -> None:
    """Delete a job, its transcript, its reports and their stored files (audio, report files).
    A job under legal hold is refused (409 `legal_hold`).

    A running transcription is stopped first (its worker finds the job gone). The files are
    deleted after the commit, durably (apps.core.storage): a rollback keeps them, a failed delete
    is retried by the hourly sweep.
    """
    locked = TranscriptionJob.objects.select_for_update().filter(pk=job.pk).first()
    if locked is None:
        return
    refuse_if_held(locked)
    # Locked too, so a report finishing meanwhile waits and then finds its row gone.
    report_keys = locked.reports.select_for_update().values_list("file_key", flat=True)
    keys = [locked.audio_key, *report_keys]
    job_id, organisation_id = locked.pk, locked.organisation_id
    if locked.status in ACTIVE_STATUSES:
        dispatch_waiting_on_commit(organisation_id)
    locked.delete()
    events.job_deleted(job_id=job_id, organisation_id=organisation_id)
    delete_files_on_commit(keys)


@transaction.atomic
def job_retry(*, job: TranscriptionJob) -> TranscriptionJob:
    """Run a failed job again from the start (an operator's decision): queued, with its error and
    delivery count reset, and published after the commit with its own priority and time limits.
    """
    locked = TranscriptionJob.objects.select_for_update().filter(pk=job.pk).first()
    if locked is None:
        raise ApplicationError("No such job.", code="job_not_found", status_code=404)
    if locked.status != JobStatus.FAILED:
        raise ConflictError(
            f"The job is {locked.status}; only failed jobs can be retried.",
            code="job_not_retryable",
        )
    if not locked.audio_key:
        raise ConflictError(
            "The job's audio was deleted (retention), so it cannot run again.",
            code="job_audio_deleted",
        )
    now = timezone.now()
    reset: dict[str, Any] = {
        "status": JobStatus.QUEUED,
        "queued_at": now,
        "dispatched_at": None,
        "started_at": None,
        "finished_at": None,
        "heartbeat_at": None,
        "worker": "",
        "progress": 0.0,
        # A fresh delivery budget: the poison cap counts from here.
        "attempts": 0,
        "deliveries_ended": 0,
        "cancel_requested": False,
        "error_code": "",
        "error_message": "",
        "processing_seconds": None,
    }
    for name, value in reset.items():
        setattr(locked, name, value)
    locked.save(update_fields=[*reset, "updated_at"])
    events.job_changed(locked)
    # Robust, as in _create_job: the stale-queue sweeper publishes what this could not.
    transaction.on_commit(lambda: job_dispatch(job_id=locked.pk), robust=True)
    logger.info("Job %s queued again by an operator", locked.pk, extra={"job_id": str(locked.pk)})
    return locked


@transaction.atomic
def organisation_delete(*, organisation) -> None:
    """Delete an organisation with everything it owns, and its stored files after the commit.

    For operators (the admin). The stored files are jobs' audio, reports and unused uploads, so
    this lives beside `job_delete`.

    Locks are taken in the order the workers take them: a job, report or upload row first, the
    organisation's row last (a worker finishing a job holds the job and then, inserting a webhook
    delivery, a key-share lock on the organisation). Taking the organisation first would deadlock
    with it. Every report is locked, being built or not, so one finishing meanwhile finds its row
    gone and discards its file. Once the organisation is locked no child can be inserted (an
    insert needs its row), so the files of children that appeared between the two steps are read
    again then.
    """
    from apps.accounts.models import Organisation
    from apps.reports.models import Report

    def children(*, lock: bool) -> list[str]:
        def rows(queryset):
            return (queryset.select_for_update() if lock else queryset).order_by("pk")

        jobs = rows(TranscriptionJob.objects.filter(organisation_id=organisation.pk))
        reports = rows(Report.objects.filter(organisation_id=organisation.pk))
        uploads = rows(
            # A consumed upload's object is its job's audio, listed with the job.
            Upload.objects.filter(organisation_id=organisation.pk, status=Upload.Status.PENDING)
        )
        return [
            *jobs.values_list("audio_key", flat=True),
            *reports.values_list("file_key", flat=True),
            *uploads.values_list("key", flat=True),
        ]

    keys = children(lock=True)
    locked = Organisation.objects.select_for_update().filter(pk=organisation.pk).first()
    if locked is None:
        return
    # Every job is locked: none can be held (or released) until this commits or rolls back.
    if held := held_jobs_count(organisation_id=organisation.pk):
        raise LegalHold(
            f"{held} job(s) of this organisation are under legal hold: release them (an admin of "
            "the organisation, or the job's admin page) before deleting it.",
            details={"held_jobs": held},
        )
    keys += children(lock=False)
    # Their forms may still be POSTed: deleted again once they cannot be.
    pending = list(
        Upload.objects.filter(organisation_id=organisation.pk, status=Upload.Status.PENDING).only(
            "key", "expires_at"
        )
    )
    locked.delete()
    delete_files_on_commit(keys)
    _delete_ticket_objects_again(pending)
