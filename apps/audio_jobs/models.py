"""Transcription jobs, their results and presigned uploads.

Every row belongs to an organisation; selectors scope by it. A job's state changes only through
services (web) and workers/transcription.py, each in its own transaction.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q

from apps.core.generations import GenerationalCache, InvalidatingQuerySet
from apps.core.models import TimeStampedModel

# Rendered job lists and details per organisation (apps.core.generations): any write to a job
# invalidates its organisation's entries.
READ_CACHE = GenerationalCache("jobs:v1", timeout_setting="API_READ_CACHE_SECONDS")


class QueueState(models.TextChoices):
    """Where a queued job stands (`selectors.job_queue_position`)."""

    WAITING = "waiting", "Waiting for one of its organisation's places"
    ON_QUEUE = "on_queue", "On the shared transcription queue"
    RUNNING = "running", "Running"
    ENDED = "ended", "Ended"


class TranscriptionJobQuerySet(InvalidatingQuerySet):
    generational_cache = READ_CACHE
    scope_field = "organisation_id"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PROCESSING = "processing", "Processing"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.PROCESSING)
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobTask(models.TextChoices):
    TRANSCRIBE = "transcribe", "Transcribe"
    TRANSLATE = "translate", "Translate to English"


class JobPriority(models.IntegerChoices):
    # Celery/Redis priorities: lower number = served first.
    HIGH = 0, "High"
    NORMAL = 5, "Normal"
    LOW = 9, "Low"


# What PII redaction did with a job's audio (`TranscriptionJob.redaction["audio"]`).
REDACTION_AUDIO_OUTCOMES = ("silenced", "nothing_to_silence", "kept_legal_hold", "not_asked")


class TranscriptionJob(TimeStampedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="transcription_jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="transcription_jobs",
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.FloatField(default=0.0, help_text="Percent of the audio processed.")
    attempts = models.PositiveIntegerField(
        default=0, help_text="Deliveries that started processing (caps poison messages)."
    )
    # db_default: the release before it inserts jobs without the column while this one migrates;
    # no CHECK (a PositiveIntegerField's), which PostgreSQL would validate by scanning every job.
    deliveries_ended = models.IntegerField(
        db_default=0,
        default=0,
        help_text="Deliveries that ended in the worker (returned, failed or retried); "
        "attempts minus this is how many were interrupted (the worker died).",
    )
    cancel_requested = models.BooleanField(default=False)

    # What was asked for.
    language = models.CharField(max_length=16, blank=True, help_text="Empty: detect.")
    model_profile = models.CharField(max_length=32, blank=True, help_text="Empty: choose.")
    task = models.CharField(max_length=16, choices=JobTask.choices, default=JobTask.TRANSCRIBE)
    word_timestamps = models.BooleanField(default=True)
    initial_prompt = models.TextField(blank=True)
    # Names and terms given to the model in every window's prompt (workers.engines.base).
    # db_default: the release before inserts jobs without it during a rolling upgrade.
    hotwords = models.TextField(blank=True, default="", db_default="")
    priority = models.PositiveSmallIntegerField(
        choices=JobPriority.choices, default=JobPriority.NORMAL
    )
    # Unused: earlier releases stored it and never called it; the API now refuses it. Kept so an
    # older release still writing it during a rolling upgrade does not fail; a later release
    # drops the column.
    callback_url = models.URLField(max_length=2000, blank=True)
    idempotency_key = models.CharField(max_length=200, blank=True)
    # The job whose stored audio this one transcribes again (`job_retranscribe`); null for an
    # upload, or once that job is deleted. Indexed by the partial `job_retranscribed_from`
    # (built concurrently): deleting a job sets its retranscriptions' link to null.
    retranscribed_from = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,
        related_name="retranscriptions",
    )

    # The audio.
    audio_key = models.CharField(max_length=500, blank=True, help_text="Storage key.")
    original_filename = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    container = models.CharField(max_length=64, blank=True)
    codec = models.CharField(max_length=64, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    audio_validated = models.BooleanField(default=False)

    # How it went.
    queued_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    engine = models.CharField(max_length=32, blank=True)
    model_used = models.CharField(max_length=32, blank=True)
    model_sha256 = models.CharField(max_length=64, blank=True)
    engine_settings = models.JSONField(default=dict, blank=True)
    processing_seconds = models.FloatField(null=True, blank=True)
    # The machine transcript's automatic checks (apps/audio_jobs/quality.py), written with
    # `completed`; null when not checked (a job that did not complete, or one completed before
    # the checks existed). They describe the engine's output: a human edit does not change them.
    quality = models.JSONField(null=True, blank=True, help_text="Automatic quality checks.")
    quality_warnings = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Warning flags the checks raised (null: not checked)."
    )
    # With a warning from the checks, transcribe again with the next larger model and keep the
    # better transcript (processing._rerun_if_flagged); what happened is `quality["rerun"]`.
    quality_rerun = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Transcribe again with a larger model when the checks warn.",
    )
    # The checks in one line, kept so that job lists need not load `quality` (up to ~40 KB).
    # Null, like the two above, when not checked: the API says null, not "".
    quality_summary = models.CharField(max_length=300, null=True, blank=True)  # noqa: DJ001
    # PII redaction (apps/audio_jobs/redaction.py): what was asked for (the request's policies
    # merged with the organisation's), and what the worker did (null until it completed).
    # db_default on every NOT NULL column this release adds: the release before it inserts jobs
    # without them while this one migrates (tests/core/test_rolling_upgrade.py).
    redact_pii = models.JSONField(
        default=list,
        db_default=[],
        blank=True,
        help_text="Entity types redacted from the transcript.",
    )
    redact_pii_audio = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Silence the redacted spans in the stored audio too.",
    )
    redact_pii_sub = models.CharField(
        max_length=16, default="entity_name", db_default="entity_name"
    )
    redaction = models.JSONField(
        null=True, blank=True, help_text="What redaction found and did (null: not asked)."
    )
    # Speaker diarization (workers/engines/speakers.py): asked for with the job; what the worker
    # found (null until completed, or when not asked); the names members gave the labels.
    diarize = models.BooleanField(
        default=False, db_default=False, help_text="Label who spoke each segment and word."
    )
    # No CHECK constraints (PostgreSQL would scan every job to add one): the API validates.
    speakers_expected = models.SmallIntegerField(
        null=True, blank=True, help_text="The number of speakers, when known (null: detect)."
    )
    max_speakers = models.SmallIntegerField(
        null=True, blank=True, help_text="At most this many speakers (null: the platform's cap)."
    )
    diarization = models.JSONField(
        null=True, blank=True, help_text="Speakers found, or why none could be (null: not asked)."
    )
    speaker_names = models.JSONField(
        default=dict, db_default={}, blank=True, help_text="Names given to speaker labels."
    )
    # Legal hold (apps/audio_jobs/holds.py): while set, nothing deletes the job or its audio
    # (members, retention, the organisation's deletion); admins place and release it.
    legal_hold_at = models.DateTimeField(null=True, blank=True)
    legal_hold_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        # No index of its own: a user's deletion scans the few held jobs through
        # `job_org_held`'s rows, and building one would block the job table's writes.
        db_index=False,
    )
    legal_hold_reason = models.CharField(max_length=500, blank=True, db_default="")

    objects = TranscriptionJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organisation", "-created_at"], name="job_org_created"),
            # `?legal_hold=true`, and the organisation's deletion looking for a hold: few rows.
            models.Index(
                fields=["organisation", "-created_at"],
                name="job_org_held",
                condition=models.Q(legal_hold_at__isnull=False),
            ),
            models.Index(fields=["organisation", "status", "-created_at"], name="job_org_status"),
            # Fair dispatch (services.dispatch_waiting / jobs_published): an organisation's
            # waiting jobs in the order they get a place, and the jobs that hold one.
            models.Index(
                fields=["organisation", "priority", "created_at"],
                name="job_waiting",
                condition=Q(status="queued", dispatched_at__isnull=True),
            ),
            models.Index(
                fields=["organisation"],
                name="job_holding_place",
                condition=Q(status="processing") | Q(status="queued", dispatched_at__isnull=False),
            ),
            # `GET /jobs?flagged=true`: an organisation's jobs with quality warnings, newest
            # first, without walking its unflagged ones.
            models.Index(
                fields=["organisation", "-created_at"],
                name="job_org_flagged",
                condition=Q(quality_warnings__gt=0),
            ),
            # Deleting a job nulls the links of the jobs transcribed again from it.
            models.Index(
                fields=["retranscribed_from"],
                name="job_retranscribed_from",
                condition=Q(retranscribed_from__isnull=False),
            ),
            models.Index(
                fields=["status", "queued_at"],
                name="job_active_queued",
                condition=Q(status__in=["queued", "processing"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="job_unique_idempotency_key",
            ),
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=100), name="job_progress_range"
            ),
        ]

    def __str__(self) -> str:
        return f"Job {self.id} ({self.status})"

    def speakers_found(self) -> list[dict]:
        """The speakers diarization labelled (`diarization["speakers"]`): none when it was not
        asked, failed, or has not run."""
        found = self.diarization.get("speakers") if isinstance(self.diarization, dict) else None
        return [item for item in found or [] if isinstance(item, dict)]

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class TranscriptManager(models.Manager):
    """Every read leaves out `search_vector`: the trigger's, a few KB a transcript that nothing
    in Python reads (search filters on it in SQL). Also the base manager (`job.transcript`), and
    a save of such a row writes only the fields it loaded, so the vector is never written back."""

    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().defer("search_vector")


class Transcript(models.Model):
    """The result of a job: one row per job, written in the same transaction as `completed`.

    Members may correct it afterwards (apps.audio_jobs.editing): each edit or revert raises
    `revision` (0 is the engine's output) and records a `TranscriptRevision` holding the prior
    state of the segments it changed, so every earlier revision, the machine output included,
    can be rebuilt from the current row.
    """

    job = models.OneToOneField(
        TranscriptionJob, on_delete=models.CASCADE, primary_key=True, related_name="transcript"
    )
    text = models.TextField()
    language = models.CharField(max_length=16)
    language_probability = models.FloatField()
    duration = models.FloatField()
    segments = models.JSONField(help_text="Segments with their words (start, end, probability).")
    word_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # db_default: a worker of the release before this one inserts transcripts without these
    # columns while this one migrates; no CHECK (PostgreSQL would scan the table to validate it).
    revision = models.IntegerField(
        db_default=0, default=0, help_text="0: the engine's output; raised by every edit/revert."
    )
    edited_at = models.DateTimeField(null=True, blank=True)

    # `GET /jobs?q=` on PostgreSQL (selectors.job_list): `to_tsvector('simple', text)`, stored,
    # so a match is not recomputed from the text of every candidate row (a common word over
    # 100,000 transcripts took 160-250 ms recomputing; docs/benchmarks.md). Kept by a trigger
    # (migration 0011: on insert, and on update when the text changes or it is null), never
    # written by Django; GIN index `transcript_text_search` (kept out of the model state: SQLite
    # cannot build it, and would try to whenever it rebuilds this table). Unused on SQLite.
    search_vector = SearchVectorField(null=True, editable=False)

    objects = TranscriptManager()

    class Meta:
        base_manager_name = "objects"

    def __str__(self) -> str:
        return f"Transcript of {self.job_id}"

    def as_result(self) -> dict:
        """The stored result in the engines' dict form (what apps.audio_jobs.formats renders),
        with the names members gave the speaker labels when there are any."""
        names = self.job.speaker_names or {}
        return {
            "text": self.text,
            "language": self.language,
            "language_probability": self.language_probability,
            "duration": self.duration,
            "segments": self.segments,
            "task": self.job.task,
            **({"speaker_names": dict(names)} if names else {}),
        }


class RevisionKind(models.TextChoices):
    EDIT = "edit", "Edit"
    REVERT = "revert", "Revert"


class EditorType(models.TextChoices):
    USER = "user", "User"
    API_KEY = "api_key", "API key"
    SYSTEM = "system", "System"


class TranscriptRevision(models.Model):
    """One edit (or revert) of a transcript: who, when, why, and what it replaced.

    `before` holds the state the revision replaced, only for the segments it changed:
    `{"segments": {"<index>": <segment as stored>}, "word_count": n}` and `"text"` when the
    previous text was not the join of its segments (an engine that wrote it otherwise). Walking
    the revisions back from the current row rebuilds any earlier one; a long transcript edited a
    word at a time stores a segment per revision, not the whole transcript. Rows are never
    changed or deleted except with their transcript.
    """

    id = models.BigAutoField(primary_key=True)
    transcript = models.ForeignKey(Transcript, on_delete=models.CASCADE, related_name="revisions")
    revision = models.IntegerField()
    kind = models.CharField(max_length=16, choices=RevisionKind.choices, default=RevisionKind.EDIT)
    reverted_to = models.IntegerField(null=True, blank=True)
    segment_ids = models.JSONField(default=list, help_text="Ids of the segments it changed.")
    before = models.JSONField(default=dict)
    edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    editor_type = models.CharField(
        max_length=16, choices=EditorType.choices, default=EditorType.SYSTEM
    )
    # Who it was when the row was written (kept when the user or key is deleted).
    editor_repr = models.CharField(max_length=255, blank=True)
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-revision"]
        constraints = [
            # Also the index of the list (newest first) and of the rebuild (revision > n).
            models.UniqueConstraint(
                fields=["transcript", "revision"], name="transcript_revision_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"Revision {self.revision} of {self.transcript_id}"


class Upload(TimeStampedModel):
    """A presigned direct upload to S3-compatible storage, consumed by at most one job."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        CONSUMED = "consumed", "Consumed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="uploads"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="uploads"
    )
    key = models.CharField(max_length=500, unique=True)
    filename = models.CharField(max_length=255, blank=True)
    max_size = models.BigIntegerField()
    expires_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organisation", "-created_at"], name="upload_org_created"),
            # The hourly sweep of abandoned tickets reads only pending ones, by expiry.
            models.Index(
                fields=["expires_at"],
                name="upload_pending_expiry",
                condition=models.Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"Upload {self.id} ({self.status})"


class AudioUsage(models.Model):
    """Audio seconds counted against an organisation's monthly quota: one row per job, for good.

    Written in the transaction that records the job's duration (the job's creation from a
    multipart upload, the worker's validation of a presigned one), under the organisation's row
    lock. No foreign key to the job: deleting a job keeps its row, so it gives no minutes back.
    The only refund is a job cancelled before any worker started it (`job_cancel`). The month a
    row counts in is its job's creation month.
    """

    job_id = models.UUIDField(primary_key=True)
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="audio_usage"
    )
    seconds = models.FloatField()
    job_created_at = models.DateTimeField(help_text="When the job was created (its month).")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["organisation", "job_created_at"], name="usage_org_job_created")
        ]

    def __str__(self) -> str:
        return f"{self.seconds:.0f} s of job {self.job_id}"


class TranscriptShare(models.Model):
    """A read-only link to one job's transcript for someone without an account
    (apps/audio_jobs/shares.py). Only the token's sha256 is stored; the link expires, and can be
    revoked; every use is counted and audited."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="transcript_shares"
    )
    job = models.ForeignKey(TranscriptionJob, on_delete=models.CASCADE, related_name="shares")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The key that made it, if one did: revoking the key revokes its links.
    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    token_hash = models.CharField(max_length=64, unique=True)
    token_prefix = models.CharField(max_length=16, help_text="To recognise a link, not to use it.")
    note = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    access_count = models.PositiveIntegerField(default=0)
    last_accessed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["job", "-created_at"], name="share_job_created")]

    def __str__(self) -> str:
        return f"Share {self.token_prefix}… of {self.job_id}"
