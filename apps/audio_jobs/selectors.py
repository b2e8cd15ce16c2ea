"""Reads of audio jobs, always scoped to one organisation (fails closed)."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime

from django.db import connection
from django.db.models import F, Func, Q, QuerySet, Sum, TextField
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from apps.core.exceptions import NotFoundError

from .models import (
    AudioUsage,
    JobStatus,
    Transcript,
    TranscriptionJob,
    TranscriptRevision,
    Upload,
)
from .search_index import SEARCH_CONFIG, fold

# Transcripts are in many languages: "simple" lower-cases and splits words, with no stemming or
# stop words of one language. Migration 0011's index `transcript_text_search` is built on
# exactly the expression `_transcripts_matching` filters on; change both or neither.

LIST_DEFERRED = (
    "quality",  # lists show quality_warnings and quality_summary only
    "audio_key",
    "dispatched_at",
    "heartbeat_at",
    "worker",
    "audio_validated",
    "created_by__password",
    "created_by__last_login",
    "created_by__email",
    "created_by__full_name",
    "created_by__date_joined",
    "created_by__email_verified_at",
    "created_by__token_version",
    "created_by__is_staff",
    "created_by__is_superuser",
)


def job_list(
    *,
    organisation,
    status: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    flagged: bool | None = None,
    legal_hold: bool | None = None,
    q: str | None = None,
) -> QuerySet[TranscriptionJob]:
    queryset = (
        TranscriptionJob.objects.filter(organisation=organisation)
        .select_related("created_by")
        # A page renders neither the worker's bookkeeping nor the creator's account columns.
        .defer(*LIST_DEFERRED)
    )
    if status:
        queryset = queryset.filter(status=status)
    if created_after:
        queryset = queryset.filter(created_at__gte=created_after)
    if created_before:
        queryset = queryset.filter(created_at__lt=created_before)
    if flagged is True:
        queryset = queryset.filter(quality_warnings__gt=0)
    elif flagged is False:  # checked and clean (unchecked jobs are neither)
        queryset = queryset.filter(quality_warnings=0)
    if legal_hold is not None:
        queryset = queryset.filter(legal_hold_at__isnull=not legal_hold)
    if q:
        # File names compared folded too (accents, case): `lexiscore_fold`, a SQL function on
        # both databases (search_index).
        queryset = queryset.annotate(
            folded_filename=Func(
                F("original_filename"), function="lexiscore_fold", output_field=TextField()
            )
        ).filter(
            Q(pk__in=_transcripts_matching(organisation, q).values("job_id"))
            | Q(folded_filename__contains=fold(q))
        )
    return queryset.order_by("-created_at")


# A term of nothing but operators and punctuation ("-", "--", "!"): dropped. A run of them makes
# PostgreSQL's websearch_to_tsquery fail ("tsquery stack too small" from 33 lone "-" on), and
# none of them means anything without a word.
_OPERATORS_ONLY = re.compile(r"^\W+$")
_PHRASE = re.compile(r'(-?)"([^"]*)"')


def search_terms(q: str) -> str:
    """`q` without terms that are only operators, and with "--x" as "-x" (web-search syntax
    otherwise untouched: quotes, `or`, `-`)."""
    return " ".join(re.sub(r"^-+", "-", t) for t in q.split() if not _OPERATORS_ONLY.match(t))


def _transcripts_matching(organisation, q: str) -> QuerySet[Transcript]:
    """The organisation's transcripts whose text matches `q`.

    PostgreSQL: full-text search of the stored `search_vector`, `q` in web-search syntax
    (`websearch_to_tsquery`, given `search_terms(q)`), served by the GIN index
    `transcript_text_search`. A subquery rather than
    a join, so the index can serve it although the list ORs it with the file name. SQLite (the
    embedded defaults): every word or "quoted phrase" as a substring, all of them, none of the
    `-excluded` ones, scanning every transcript (no index; no `or`), accents and case folded
    (`search_index.fold`). PostgreSQL folds accents too (configuration `lexiscore_search`).
    """
    transcripts = Transcript.objects.filter(job__organisation=organisation)
    terms = search_terms(q)
    if not terms:
        return transcripts.none()
    if connection.vendor != "postgresql":
        return _substring_matching(transcripts, terms)
    from django.contrib.postgres.search import SearchQuery

    # The stored vector (a trigger keeps it; migration 0011), not one computed from the text:
    # recomputing it for every candidate row of a common word was the whole cost.
    return transcripts.filter(
        search_vector=SearchQuery(terms, search_type="websearch", config=SEARCH_CONFIG)
    )


def _substring_matching(transcripts: QuerySet[Transcript], terms: str) -> QuerySet[Transcript]:
    wanted: list[tuple[bool, str]] = []  # (excluded, text)

    def phrase(match: re.Match) -> str:
        wanted.append((match.group(1) == "-", match.group(2)))
        return " "

    for word in _PHRASE.sub(phrase, terms).split():
        excluded = word.startswith("-") and len(word) > 1
        wanted.append((excluded, word.lstrip("-").strip('"') if excluded else word.strip('"')))
    # Compared folded (accents dropped, case folded), as PostgreSQL's configuration does.
    transcripts = transcripts.annotate(
        folded_text=Func(F("text"), function="lexiscore_fold", output_field=TextField())
    )
    for excluded, text in wanted:
        if not text.strip():
            continue
        if excluded:
            transcripts = transcripts.exclude(folded_text__contains=fold(text))
        else:
            transcripts = transcripts.filter(folded_text__contains=fold(text))
    return transcripts


def job_for_update(*, organisation, job_id) -> TranscriptionJob:
    """The organisation's job, its row locked (FOR NO KEY UPDATE: inserts referencing it still
    go on) until the caller's transaction ends; 404 otherwise."""
    job = (
        TranscriptionJob.objects.select_for_update(no_key=True)
        .filter(organisation=organisation, pk=job_id)
        .first()
    )
    if job is None:
        raise NotFoundError("No such job.", code="job_not_found")
    return job


def job_get(*, organisation, job_id) -> TranscriptionJob:
    try:
        return TranscriptionJob.objects.select_related("created_by").get(
            organisation=organisation, pk=job_id
        )
    except (TranscriptionJob.DoesNotExist, ValueError):
        raise NotFoundError("No such job.", code="job_not_found") from None


# Completed jobs of the organisation whose processing time gives the estimate's time per job.
QUEUE_ESTIMATE_SAMPLE = 50
# Jobs ahead on the shared queue are shown exactly up to this, then rounded down to tens: other
# organisations' volumes are not the caller's to follow.
QUEUE_EXACT_UP_TO = 10


def job_queue_position(*, organisation, job_id) -> dict:
    """Where a queued job stands, read live (never cached: it moves as other jobs do).

    - `waiting`: the organisation has its plan's `PLAN_ACTIVE_JOBS` published, so the job waits
      for one of them to end; `waiting_ahead` of its organisation's waiting jobs get a place
      first (higher `priority`, then older: `services.dispatch_waiting`'s order).
    - `on_queue`: published on the shared transcription queue; `queued_ahead` jobs there (every
      organisation's, counted, never shown, and rounded to tens past 10) are served first: a
      higher priority, or the same and published earlier. `estimated_start_seconds` is a rough
      estimate: those jobs shared among the jobs running now, plus half a job for a place to
      free, each taking what the organisation's last completed jobs took on average (null with
      nothing running or nothing to measure).
    - `running` and `ended`: nothing ahead.

    Every count is over the partial indexes of fair dispatch (`job_waiting`,
    `job_holding_place`, `job_active_queued`): bounded by what is queued, not by the table.
    """
    from .services import active_jobs_limit, jobs_published

    job = job_get(organisation=organisation, job_id=job_id)
    answer: dict = {
        "job_id": job.pk,
        "status": job.status,
        "state": "ended",
        "waiting_ahead": None,
        "queued_ahead": None,
        "estimated_start_seconds": None,
        "organisation_active_jobs": jobs_published(organisation.pk).count(),
        "organisation_active_jobs_limit": active_jobs_limit(organisation.plan) or None,
        "measured_at": timezone.now(),
    }
    if job.status == JobStatus.PROCESSING:
        answer["state"] = "running"
    elif job.status == JobStatus.QUEUED and job.dispatched_at is None:
        answer["state"] = "waiting"
        answer["waiting_ahead"] = (
            TranscriptionJob.objects.filter(
                organisation=organisation, status=JobStatus.QUEUED, dispatched_at__isnull=True
            )
            .filter(
                Q(priority__lt=job.priority)
                | Q(priority=job.priority, created_at__lt=job.created_at)
                | Q(priority=job.priority, created_at=job.created_at, pk__lt=job.pk)
            )
            .count()
        )
    elif job.status == JobStatus.QUEUED:
        answer["state"] = "on_queue"
        ahead = (
            TranscriptionJob.objects.filter(status=JobStatus.QUEUED, dispatched_at__isnull=False)
            .filter(
                Q(priority__lt=job.priority)
                | Q(priority=job.priority, dispatched_at__lt=job.dispatched_at)
            )
            .exclude(pk=job.pk)
            .count()
        )
        running = TranscriptionJob.objects.filter(status=JobStatus.PROCESSING).count()
        answer["queued_ahead"] = ahead if ahead <= QUEUE_EXACT_UP_TO else ahead // 10 * 10
        per_job = _mean_processing_seconds(organisation)
        if running and per_job is not None:
            # The jobs ahead share the running places; a place frees in half a job, on average.
            answer["estimated_start_seconds"] = round(ahead * per_job / running + per_job / 2)
    return answer


def _mean_processing_seconds(organisation) -> float | None:
    """What the organisation's last completed jobs took to process, on average (None: none)."""
    times = [
        seconds
        for seconds in TranscriptionJob.objects.filter(
            organisation=organisation, status=JobStatus.COMPLETED
        )
        .order_by("-created_at")
        .values_list("processing_seconds", flat=True)[:QUEUE_ESTIMATE_SAMPLE]
        if seconds is not None
    ]
    return sum(times) / len(times) if times else None


def transcript_revision_list(*, organisation, job_id) -> QuerySet[TranscriptRevision]:
    """The revisions of the organisation's job's transcript, newest first (404 for a job of
    another organisation or none). A job without a transcript has none."""
    job = job_get(organisation=organisation, job_id=job_id)
    return (
        TranscriptRevision.objects.filter(transcript_id=job.pk)
        .select_related("edited_by", "api_key")
        # The list shows who, not their secrets, and never the stored previous text.
        .defer("before", "edited_by__password", "api_key__key_hash")
        .order_by("-revision")
    )


def job_by_idempotency_key(*, organisation, key: str) -> TranscriptionJob | None:
    if not key:
        return None
    return TranscriptionJob.objects.filter(organisation=organisation, idempotency_key=key).first()


def upload_get(*, organisation, upload_id) -> Upload:
    try:
        return Upload.objects.get(organisation=organisation, pk=upload_id)
    except (Upload.DoesNotExist, ValueError):
        raise NotFoundError("No such upload.", code="upload_not_found") from None


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _counted_usage(organisation, since: datetime, until: datetime | None):
    """What counts against the quota, by the job's creation time: the usage ledger
    (`AudioUsage`: jobs deleted since still count), less the jobs that still exist and failed or
    were cancelled before work started (nothing was transcribed); and the jobs with a duration
    and no ledger row, which a release from before the ledger wrote while an upgrade ran (the
    documented upgrade migrates while the old release still serves). Those count as they did
    then, for as long as they exist. Returns (ledger rows, unrecorded jobs)."""
    rows = AudioUsage.objects.filter(organisation=organisation, job_created_at__gte=since)
    unrecorded = TranscriptionJob.objects.filter(
        organisation=organisation, created_at__gte=since, duration_seconds__isnull=False
    ).exclude(pk__in=AudioUsage.objects.filter(organisation=organisation).values("job_id"))
    if until is not None:
        rows = rows.filter(job_created_at__lt=until)
        unrecorded = unrecorded.filter(created_at__lt=until)
    not_started = TranscriptionJob.objects.filter(
        organisation=organisation,
        status__in=[JobStatus.FAILED, JobStatus.CANCELLED],
        started_at__isnull=True,
    ).values("pk")
    rows = rows.exclude(job_id__in=not_started)
    unrecorded = unrecorded.exclude(
        status__in=[JobStatus.FAILED, JobStatus.CANCELLED], started_at__isnull=True
    )
    return rows, unrecorded


def audio_seconds_used(*, organisation, since: datetime, until: datetime | None = None) -> float:
    """Audio seconds counted against the quota for jobs created from `since` (to `until`)."""
    rows, unrecorded = _counted_usage(organisation, since, until)
    used = rows.aggregate(total=Coalesce(Sum("seconds"), 0.0))["total"]
    used += unrecorded.aggregate(total=Coalesce(Sum("duration_seconds"), 0.0))["total"]
    return float(used)


def audio_seconds_used_by_day(
    *, organisation, since: datetime, until: datetime
) -> dict[date, float]:
    """`audio_seconds_used` per UTC day of the jobs' creation (days with none are left out)."""
    rows, unrecorded = _counted_usage(organisation, since, until)
    days: dict[date, float] = defaultdict(float)
    for queryset, created, seconds in (
        (rows, "job_created_at", "seconds"),
        (unrecorded, "created_at", "duration_seconds"),
    ):
        for row in (
            queryset.annotate(day=TruncDate(created, tzinfo=UTC))
            .values("day")
            .annotate(total=Sum(seconds))
            .order_by()
        ):
            days[row["day"]] += row["total"] or 0.0
    return dict(days)
