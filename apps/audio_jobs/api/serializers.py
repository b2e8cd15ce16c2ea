from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.core.validators import MinLengthValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.drf import ChoiceSetField, CompiledOutput, InputSerializer
from workers.engines.base import MAX_HOTWORDS_CHARS

from .. import editing, redaction, speaker_names
from ..models import (
    REDACTION_AUDIO_OUTCOMES,
    EditorType,
    JobPriority,
    JobStatus,
    JobTask,
    QueueState,
    RevisionKind,
    TranscriptionJob,
    TranscriptRevision,
    TranscriptShare,
)
from ..quality import FLAG_CODES

LANGUAGE_HELP = "Whisper language code (e.g. en, fr). Leave empty to detect the language."
MODEL_CHOICES = [
    ("", "Choose automatically"),
    ("tiny.en", "tiny.en (English only)"),
    ("base", "base (multilingual)"),
]


REVISION_MAX = 2**31 - 1  # revisions and segment ids are PostgreSQL integers


CALLBACK_URL_REFUSED = (
    "Per-job callback URLs are not supported: subscribe a webhook endpoint to job.completed and "
    "job.failed (POST /api/v1/webhooks/endpoints), signed and retried."
)


def user_ref(user) -> str | None:
    """A user as the API names them (their public id); None for none (a deleted account)."""
    return str(getattr(user, "public_id", None) or user.pk) if user else None


class JobOptionsInput(InputSerializer):
    language = serializers.CharField(
        required=False, allow_blank=True, max_length=16, help_text=LANGUAGE_HELP
    )
    model = serializers.ChoiceField(choices=MODEL_CHOICES, required=False, allow_blank=True)
    task = serializers.ChoiceField(choices=JobTask.choices, default=JobTask.TRANSCRIBE)
    word_timestamps = serializers.BooleanField(default=True)
    initial_prompt = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=1000,
        help_text="Context for the start of the audio (the model continues its style).",
    )
    hotwords = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=MAX_HOTWORDS_CHARS,
        help_text='Names and terms the audio holds, comma-separated ("Siobhan Ngata, '
        'Kubernetes"): given to the model in every 30 s window, so it writes them as spelled '
        "here. Use the words spoken, not instructions.",
    )
    priority = serializers.ChoiceField(choices=["high", "normal", "low"], default="normal")
    idempotency_key = serializers.CharField(required=False, allow_blank=True, max_length=200)

    def to_internal_value(self, data):
        # Accepted and stored by earlier releases, never called: say what to use instead.
        if isinstance(data, Mapping) and "callback_url" in data:
            raise serializers.ValidationError({"callback_url": [CALLBACK_URL_REFUSED]})
        return super().to_internal_value(data)

    def validate_language(self, value: str) -> str:
        from workers.engines.errors import ProfileError
        from workers.engines.models import choose_profile, normalise_language

        try:
            language = normalise_language(value)
            # A Whisper code is not enough: the model the job would run on must have the
            # language's token (Cantonese, "yue", is missing from the installed models').
            choose_profile(language, None)
        except ProfileError as exc:
            raise serializers.ValidationError(exc.message) from exc
        return language or ""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        from workers.engines.errors import ProfileError
        from workers.engines.models import choose_profile

        if attrs.get("model"):
            try:
                choose_profile(attrs.get("language") or None, attrs["model"])
            except ProfileError as exc:
                raise serializers.ValidationError({"model": [exc.message]}) from exc
        return attrs


class RedactionOptionsInput(JobOptionsInput):
    redact_pii = ChoiceSetField(
        choices=redaction.ENTITY_TYPES,
        required=False,
        max_length=len(redaction.ENTITY_TYPES) * 2,
        help_text="Entity types to redact from the transcript before it is stored (the "
        "organisation's policy is always added): "
        + ", ".join(redaction.ENTITY_TYPES)
        + ". Pattern-based: names and postal addresses are not found.",
    )
    redact_pii_audio = serializers.BooleanField(
        default=False,
        help_text="Also silence the redacted spans in the stored audio (the original is "
        "replaced by a FLAC copy).",
    )
    quality_rerun = serializers.BooleanField(
        default=False,
        help_text="When the automatic quality checks warn (a loop, a suspected hallucination, "
        "low confidence...), transcribe again with the next larger model for the language and "
        "keep the transcript with fewer warnings (`quality.rerun` says which). Costs compute, "
        "not minutes.",
    )
    redact_pii_sub = serializers.ChoiceField(
        choices=redaction.SUBSTITUTIONS,
        required=False,
        help_text="entity_name: [PHONE_NUMBER]; hash: each letter and digit becomes #.",
    )
    diarize = serializers.BooleanField(
        default=False,
        help_text="Label who spoke: every segment and word gets a `speaker` (SPEAKER_00, "
        "SPEAKER_01... in order of first appearance), subtitles and reports name them, and "
        "`diarization` lists each speaker's time. Runs on the worker with a model shipped in a "
        "package; costs compute, not minutes.",
    )
    speakers_expected = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=settings.DIARIZATION_MAX_SPEAKERS,
        help_text="With `diarize`: the number of speakers, when known (more accurate than "
        "detecting it). At most DIARIZATION_MAX_SPEAKERS.",
    )
    max_speakers = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=settings.DIARIZATION_MAX_SPEAKERS,
        help_text="With `diarize`: at most this many speakers (default and ceiling: "
        "DIARIZATION_MAX_SPEAKERS).",
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        # Their ceiling, DIARIZATION_MAX_SPEAKERS, is the fields' `max_value`.
        errors: dict[str, list[str]] = {}
        for name in ("speakers_expected", "max_speakers"):
            if attrs.get(name) is not None and not attrs.get("diarize"):
                errors[name] = ["Only with `diarize: true`."]
        expected, most = attrs.get("speakers_expected"), attrs.get("max_speakers")
        if not errors and expected is not None and most is not None and expected > most:
            errors["speakers_expected"] = ["More than `max_speakers`."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class JobCreateMultipartInput(RedactionOptionsInput):
    file = serializers.FileField(help_text="The audio file (wav, mp3, flac, ogg, m4a, webm).")


class JobCreateFromUploadInput(RedactionOptionsInput):
    upload_id = serializers.UUIDField(help_text="The id returned by POST /api/v1/uploads.")


class JobRetranscribeInput(RedactionOptionsInput):
    """The options of the new job (as at creation); the audio is the source job's. The source's
    redaction is kept and the request's added."""


class JobListFilterInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)
    q = serializers.CharField(
        required=False,
        min_length=1,
        max_length=200,
        help_text="Search the transcripts' text and the original file names (1-200 characters). "
        'Web-search syntax: words all match, "a phrase" in quotes, -word excludes, `or` '
        "between alternatives. Case and accents are ignored (cafe finds café).",
    )
    flagged = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="true: only jobs whose quality checks raised a warning; false: only checked "
        "jobs without one.",
    )
    legal_hold = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="true: only jobs under legal hold; false: only jobs without one.",
    )
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    page = serializers.IntegerField(required=False, min_value=1)
    # Larger sizes are capped at 100 by the paginator rather than refused.
    page_size = serializers.IntegerField(
        required=False, min_value=1, help_text="Rows per page (default 25, at most 100)."
    )


class RedactionOutput(serializers.Serializer):
    entities = serializers.DictField(
        child=serializers.IntegerField(), help_text="Spans redacted per entity type."
    )
    audio = serializers.ChoiceField(
        choices=REDACTION_AUDIO_OUTCOMES,
        help_text="silenced: the stored audio is a copy with the redacted spans silent; "
        "nothing_to_silence: nothing was found, the upload is kept; kept_legal_hold: the job "
        "was put under legal hold before it completed, so its upload was kept as evidence.",
    )
    audio_seconds_silenced = serializers.FloatField(required=False)


class SpeakerOutput(serializers.Serializer):
    id = serializers.CharField(help_text="The label on segments and words, e.g. SPEAKER_00.")
    seconds = serializers.FloatField(help_text="Seconds of speech (its words' time).")
    words = serializers.IntegerField()


class DiarizationOutput(serializers.Serializer):
    model = serializers.CharField(required=False)
    speakers = SpeakerOutput(many=True, required=False)
    seconds = serializers.FloatField(required=False, help_text="The labelling's compute time.")
    error = serializers.CharField(
        required=False,
        help_text="Why no speakers were labelled (model_not_found, model_integrity, "
        "time_limit, ...); the transcript is complete.",
    )
    message = serializers.CharField(required=False)


class JobOutput(CompiledOutput, serializers.ModelSerializer):
    model = serializers.CharField(source="model_profile")
    priority = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()
    quality_warnings = serializers.IntegerField(
        allow_null=True,
        help_text="Warning flags the automatic quality checks raised on the machine transcript "
        "(null: not checked). `GET /jobs?flagged=true` lists the jobs with any.",
    )
    quality_summary = serializers.CharField(
        allow_null=True,
        help_text='The checks in one line, e.g. "1 warning: repetition loop at 00:03:12." '
        "(null: not checked). The job's detail carries every flag in `quality`.",
    )
    redact_pii = serializers.ListField(
        child=serializers.CharField(),
        help_text="Entity types redacted from the transcript (the request's and the "
        "organisation's).",
    )
    redaction = RedactionOutput(
        allow_null=True,
        help_text="What redaction found and did; null until the job completed, or when none "
        "was asked.",
    )
    diarization = DiarizationOutput(
        allow_null=True,
        help_text="With `diarize`: the speakers found (null until the job completed, or when "
        "not asked), or why none could be labelled.",
    )
    speaker_names = serializers.DictField(
        child=serializers.CharField(),
        help_text="Names given to speaker labels (`PATCH /jobs/{id}/transcript/speakers`); "
        "subtitles, text and reports show them.",
    )
    legal_hold_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When the job was put under legal hold (null: not held). A held job and its "
        "audio cannot be deleted; the reason is in the audit trail.",
    )
    retranscribed_from = serializers.UUIDField(
        source="retranscribed_from_id",
        allow_null=True,
        help_text="The job whose audio this one transcribes again "
        "(`POST /jobs/{id}/retranscribe`); null for an upload, or once that job is deleted.",
    )

    class Meta:
        model = TranscriptionJob
        fields = [
            "id",
            "status",
            "progress",
            "attempts",
            "language",
            "model",
            "task",
            "word_timestamps",
            "initial_prompt",
            "hotwords",
            "priority",
            "idempotency_key",
            "original_filename",
            "size_bytes",
            "container",
            "codec",
            "duration_seconds",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "processing_seconds",
            "engine",
            "model_used",
            "model_sha256",
            "engine_settings",
            "quality_warnings",
            "quality_summary",
            "retranscribed_from",
            "quality_rerun",
            "redact_pii",
            "redact_pii_audio",
            "redact_pii_sub",
            "redaction",
            "diarize",
            "speakers_expected",
            "max_speakers",
            "diarization",
            "speaker_names",
            "legal_hold_at",
            "created_by",
            "error",
            "links",
        ]
        read_only_fields = fields

    def get_priority(self, job: TranscriptionJob) -> str:
        return {JobPriority.HIGH: "high", JobPriority.LOW: "low"}.get(job.priority, "normal")

    def get_created_by(self, job: TranscriptionJob) -> str | None:
        return user_ref(job.created_by)

    def get_error(self, job: TranscriptionJob) -> dict | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message}

    def get_links(self, job: TranscriptionJob) -> dict[str, str]:
        base = f"/api/v1/jobs/{job.pk}"
        links = {"self": base, "cancel": f"{base}/cancel"}
        if job.status == JobStatus.QUEUED:
            links["queue"] = f"{base}/queue"
        if job.status == JobStatus.COMPLETED:
            links["transcript"] = f"{base}/transcript"
        return links


class JobQueueOutput(serializers.Serializer):
    job_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    state = serializers.ChoiceField(
        choices=QueueState.choices,
        help_text="waiting: the organisation has its plan's active jobs published, so this one "
        "waits for one to end; on_queue: published on the shared transcription queue; running; "
        "ended (completed, failed or cancelled).",
    )
    waiting_ahead = serializers.IntegerField(
        allow_null=True,
        help_text="waiting: the organisation's waiting jobs that get a place first (higher "
        "priority, then older).",
    )
    queued_ahead = serializers.IntegerField(
        allow_null=True,
        help_text="on_queue: jobs on the shared queue served first (a higher priority, or the "
        "same and published earlier), every organisation's: exact up to 10, then rounded down "
        "to a multiple of 10 (other organisations' volumes are not shown to the job).",
    )
    estimated_start_seconds = serializers.IntegerField(
        allow_null=True,
        help_text="on_queue: a rough estimate of the seconds until it starts: the jobs ahead "
        "shared among the jobs running now, plus half a job for a place to free, each job "
        "taking what the organisation's last 50 completed jobs took on average. null: nothing "
        "running or nothing to measure.",
    )
    organisation_active_jobs = serializers.IntegerField(
        help_text="The organisation's jobs published or running now."
    )
    organisation_active_jobs_limit = serializers.IntegerField(
        allow_null=True, help_text="Its plan's PLAN_ACTIVE_JOBS (null: no limit)."
    )
    measured_at = serializers.DateTimeField()


class QualitySpanOutput(serializers.Serializer):
    start = serializers.FloatField()
    end = serializers.FloatField()
    segment_ids = serializers.ListField(
        child=serializers.IntegerField(), help_text="The segments it covers (at most 50)."
    )
    phrase = serializers.CharField(required=False, help_text="repetition_loop: what repeats.")
    repeats = serializers.IntegerField(required=False, help_text="repetition_loop: how often.")
    reasons = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="suspected_hallucination: which signals (compression ratio, ...).",
    )


class QualityFlagOutput(serializers.Serializer):
    code = serializers.ChoiceField(choices=FLAG_CODES)
    severity = serializers.ChoiceField(choices=["warning", "info"])
    message = serializers.CharField()
    spans = QualitySpanOutput(many=True, help_text="Where (at most 20; `span_count` in all).")
    span_count = serializers.IntegerField()


class QualityOutput(serializers.Serializer):
    version = serializers.IntegerField()
    error = serializers.CharField(
        required=False,
        help_text="`analysis_failed` when the checks could not run (then no flags, and "
        "`quality_warnings` is null).",
    )
    flags = QualityFlagOutput(many=True)
    metrics = serializers.DictField(
        help_text="word_count, mean_word_probability, low_confidence_word_ratio, "
        "transcribed_seconds, speech_seconds, coverage, segments_flagged, ..."
    )
    rerun = serializers.DictField(
        required=False,
        help_text="With `quality_rerun` and a warning: from_model, to_model, warnings_before, "
        "warnings_after, kept (rerun or original); `skipped` (no_larger_model) or `error` "
        "when there was no second transcript.",
    )


@extend_schema_field(QualityOutput(allow_null=True))
class QualityField(serializers.JSONField):
    """The stored checks as they are (the schema documents their shape)."""


class JobDetailOutput(JobOutput):
    """A job with its quality checks in full (lists carry only their count and summary)."""

    quality = QualityField(
        allow_null=True,
        help_text="The automatic checks of the machine transcript (docs/architecture.md, "
        '"Transcript quality checks"); null when not checked.',
    )

    class Meta(JobOutput.Meta):
        fields = [*JobOutput.Meta.fields, "quality"]
        read_only_fields = fields


class ShareCreateInput(InputSerializer):
    expires_in_days = serializers.IntegerField(
        min_value=1,
        default=7,
        help_text="Days until the link stops working (at most SHARE_LINK_MAX_DAYS, 30 by default).",
    )
    note = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="Who or what the link is for (shown to the organisation, never to its readers).",
    )

    def validate_expires_in_days(self, value: int) -> int:
        from django.conf import settings

        if value > settings.SHARE_LINK_MAX_DAYS:
            raise serializers.ValidationError(
                f"At most {settings.SHARE_LINK_MAX_DAYS} days: make a new link when it expires."
            )
        return value

    def validate_note(self, value: str) -> str:
        return _refuse_odd_characters(value)


class ShareOutput(CompiledOutput, serializers.ModelSerializer):
    job_id = serializers.UUIDField()
    created_by = serializers.SerializerMethodField()
    active = serializers.SerializerMethodField(help_text="Neither expired nor revoked.")

    class Meta:
        model = TranscriptShare
        fields = [
            "id",
            "job_id",
            "token_prefix",
            "note",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "active",
            "access_count",
            "last_accessed_at",
        ]
        read_only_fields = fields

    def get_created_by(self, share: TranscriptShare) -> str | None:
        return user_ref(share.created_by)

    def get_active(self, share: TranscriptShare) -> bool:
        from django.utils import timezone

        return share.revoked_at is None and share.expires_at > timezone.now()


class ShareCreatedOutput(ShareOutput):
    """The schema of the creation's answer: a share and its link (`ShareOutput` + `url`)."""

    url = serializers.CharField(help_text="The link, shown this once (only its hash is stored).")

    class Meta(ShareOutput.Meta):
        fields = [*ShareOutput.Meta.fields, "url"]
        read_only_fields = fields


class SharedTranscriptFormatInput(serializers.Serializer):
    format = serializers.ChoiceField(choices=["json", "txt", "srt", "vtt"], default="json")


class SharedTranscriptOutput(serializers.Serializer):
    filename = serializers.CharField()
    duration_seconds = serializers.FloatField(allow_null=True)
    language = serializers.CharField()
    revision = serializers.IntegerField()
    text = serializers.CharField(allow_blank=True)
    segments = serializers.ListField(child=serializers.DictField())
    expires_at = serializers.DateTimeField()


class LegalHoldInput(InputSerializer):
    reason = serializers.CharField(
        max_length=500,
        help_text="Why the job is held (a matter, a case number): recorded in the audit trail.",
    )

    def validate_reason(self, value: str) -> str:
        return _refuse_odd_characters(value)


class LegalHoldReleaseInput(InputSerializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True)

    def validate_reason(self, value: str) -> str:
        return _refuse_odd_characters(value)


class TranscriptFormatInput(serializers.Serializer):
    format = serializers.ChoiceField(
        choices=["json", "txt", "srt", "vtt"],
        default="json",
        help_text="json is OpenAI-compatible verbose_json (segments and words).",
    )
    download = serializers.BooleanField(default=True)
    revision = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=REVISION_MAX,
        help_text="A revision to read instead of the current one: 0 is the machine output, "
        "any revision up to the current one is rebuilt from the history.",
    )


class UploadCreateInput(InputSerializer):
    filename = serializers.CharField(max_length=255, required=False, allow_blank=True)
    size_bytes = serializers.IntegerField(min_value=1)


class UploadOutput(serializers.Serializer):
    id = serializers.UUIDField()
    expires_at = serializers.DateTimeField()
    max_size = serializers.IntegerField()
    url = serializers.URLField()
    fields = serializers.DictField(child=serializers.CharField())


# ---- transcript editing ------------------------------------------------------------------------


def _refuse_odd_characters(value: str) -> str:
    from ..editing import refused_characters

    refused = refused_characters(value)
    if refused:
        raise serializers.ValidationError(
            f"Control characters are not allowed in a transcript: {', '.join(refused[:10])}."
        )
    return value


class TranscriptSegmentEditInput(InputSerializer):
    id = serializers.IntegerField(
        min_value=0, max_value=REVISION_MAX, help_text="The segment's id in the JSON transcript."
    )
    text = serializers.CharField(
        help_text="The segment's new text (whitespace is collapsed; not empty; at most "
        "TRANSCRIPT_EDIT_MAX_SEGMENT_CHARS characters, 2000 by default)."
    )

    def validate_text(self, value: str) -> str:
        limit = editing.max_segment_chars()
        if len(value) > limit:
            raise serializers.ValidationError(f"At most {limit} characters per segment.")
        return _refuse_odd_characters(value)


class WholeBodyPatch:
    """A PATCH body that is a whole change, not a partial update of a resource: every required
    field is required. drf-spectacular sets `partial` on every PATCH body's serializer (and,
    with COMPONENT_SPLIT_PATCH, emits a `Patched*` component without `required`); pinned so the
    schema says what validation enforces. The views never ask for a partial serializer."""

    @property
    def partial(self) -> bool:
        return False

    @partial.setter
    def partial(self, value: bool) -> None:
        pass


class TranscriptEditInput(WholeBodyPatch, InputSerializer):
    revision = serializers.IntegerField(
        min_value=0,
        max_value=REVISION_MAX,
        help_text="The revision you edited (`X-Transcript-Revision` of the transcript you read).",
    )
    segments = serializers.ListSerializer(
        child=TranscriptSegmentEditInput(),
        allow_empty=False,
        # `minItems: 1` in the schema (drf-spectacular does not map `allow_empty`); an empty list
        # is refused by `allow_empty` first, with DRF's message.
        validators=[MinLengthValidator(1)],
    )
    note = serializers.CharField(
        max_length=editing.NOTE_MAX_CHARS, required=False, allow_blank=True, default=""
    )

    def validate_segments(self, value: list[dict]) -> list[dict]:
        limit = editing.max_segments_per_edit()
        if len(value) > limit:
            raise serializers.ValidationError(
                f"At most {limit} segments can be changed in one request."
            )
        seen: set[int] = set()
        repeated = sorted({s["id"] for s in value if s["id"] in seen or seen.add(s["id"])})
        if repeated:
            raise serializers.ValidationError(
                f"Each segment may appear once; repeated: {', '.join(map(str, repeated[:20]))}."
            )
        return value

    def validate_note(self, value: str) -> str:
        return _refuse_odd_characters(value)


class TranscriptRevertInput(InputSerializer):
    revision = serializers.IntegerField(
        min_value=0,
        max_value=REVISION_MAX,
        help_text="The revision to restore (0: the machine output).",
    )
    current_revision = serializers.IntegerField(
        min_value=0, max_value=REVISION_MAX, help_text="The transcript's revision as you read it."
    )
    note = serializers.CharField(
        max_length=editing.NOTE_MAX_CHARS, required=False, allow_blank=True, default=""
    )

    def validate_note(self, value: str) -> str:
        return _refuse_odd_characters(value)


class TranscriptWordOutput(serializers.Serializer):
    word = serializers.CharField()
    start = serializers.FloatField()
    end = serializers.FloatField()
    probability = serializers.FloatField(required=False, help_text="Absent on edited words.")
    edited = serializers.BooleanField(required=False)
    redacted = serializers.CharField(
        required=False, help_text="The entity type this word replaces (PII redaction)."
    )


class TranscriptSegmentOutput(serializers.Serializer):
    id = serializers.IntegerField()
    start = serializers.FloatField()
    end = serializers.FloatField()
    text = serializers.CharField(allow_blank=True)
    edited = serializers.BooleanField()
    words = TranscriptWordOutput(many=True)


class TranscriptChangeOutput(serializers.Serializer):
    job_id = serializers.UUIDField()
    revision = serializers.IntegerField()
    edited_at = serializers.DateTimeField()
    word_count = serializers.IntegerField()
    segments = TranscriptSegmentOutput(many=True, help_text="The segments this revision changed.")


def transcript_change_output(transcript, written) -> dict:
    ids = set(written.segment_ids)
    segments = []
    for index, segment in enumerate(transcript.segments):
        key = editing.segment_key(segment, index)
        if key not in ids:
            continue
        words = []
        for word in segment.get("words") or []:
            item = {"word": str(word.get("word", "")), "start": word["start"], "end": word["end"]}
            if word.get("probability") is not None:
                item["probability"] = word["probability"]
            if word.get("edited"):
                item["edited"] = True
            words.append(item)
        segments.append(
            {
                "id": key,
                "start": segment["start"],
                "end": segment["end"],
                "text": str(segment.get("text", "")),
                "edited": bool(segment.get("edited")),
                "words": words,
            }
        )
    return TranscriptChangeOutput(
        {
            "job_id": transcript.job_id,
            "revision": transcript.revision,
            "edited_at": transcript.edited_at,
            "word_count": transcript.word_count,
            "segments": segments,
        }
    ).data


class TranscriptRevisionOutput(serializers.ModelSerializer):
    kind = serializers.ChoiceField(choices=RevisionKind.choices)
    segment_ids = serializers.ListField(child=serializers.IntegerField())
    editor_type = serializers.ChoiceField(
        choices=EditorType.choices, help_text="Who made it: a user or an API key."
    )
    editor_id = serializers.SerializerMethodField()
    editor = serializers.CharField(source="editor_repr", help_text="Email or API key prefix.")
    api_key_prefix = serializers.SerializerMethodField()

    class Meta:
        model = TranscriptRevision
        fields = [
            "revision",
            "kind",
            "reverted_to",
            "segment_ids",
            "note",
            "editor_type",
            "editor_id",
            "editor",
            "api_key_prefix",
            "created_at",
        ]
        read_only_fields = fields

    def get_editor_id(self, revision: TranscriptRevision) -> str | None:
        """The user's id (as `created_by` of a job); null for an API key or a deleted user."""
        user = revision.edited_by
        return str(user.public_id) if user is not None else None

    def get_api_key_prefix(self, revision: TranscriptRevision) -> str | None:
        return revision.api_key.prefix if revision.api_key is not None else None


class SpeakerNamesInput(WholeBodyPatch, InputSerializer):
    names = serializers.DictField(
        child=serializers.CharField(
            allow_null=True, allow_blank=True, max_length=speaker_names.MAX_NAME_CHARS
        ),
        allow_empty=False,
        help_text='Label to name, e.g. {"SPEAKER_00": "Alice"}; null or "" removes a name. '
        f"Names: at most {speaker_names.MAX_NAME_CHARS} characters, whitespace collapsed.",
    )

    def validate_names(self, value: dict[str, str | None]) -> dict[str, str | None]:
        if len(value) > settings.DIARIZATION_MAX_SPEAKERS:
            raise serializers.ValidationError(
                f"At most {settings.DIARIZATION_MAX_SPEAKERS} speakers at once."
            )
        cleaned: dict[str, str | None] = {}
        for label, name in value.items():
            try:
                cleaned[label] = speaker_names.clean_name(name) if name else None
            except ValueError as exc:
                raise serializers.ValidationError({label: [str(exc)]}) from exc
        return cleaned


class SpeakerItemOutput(SpeakerOutput):
    name = serializers.CharField(allow_null=True, help_text="Its name, when one was given.")


class SpeakerListOutput(serializers.Serializer):
    speakers = SpeakerItemOutput(many=True)


def speaker_list_output(job) -> dict:
    names = job.speaker_names or {}
    return {"speakers": [{**item, "name": names.get(item["id"])} for item in job.speakers_found()]}
