from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers

from apps.core.drf import CompiledOutput, InputSerializer

from ..models import JobPriority, JobStatus, JobTask, TranscriptionJob

LANGUAGE_HELP = "Whisper language code (e.g. en, fr). Leave empty to detect the language."
MODEL_CHOICES = [
    ("", "Choose automatically"),
    ("tiny.en", "tiny.en (English only)"),
    ("base", "base (multilingual)"),
]


CALLBACK_URL_REFUSED = (
    "Per-job callback URLs are not supported: subscribe a webhook endpoint to job.completed and "
    "job.failed (POST /api/v1/webhooks/endpoints), signed and retried."
)


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
        help_text="Vocabulary hints / context for the model.",
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


class JobCreateMultipartInput(JobOptionsInput):
    file = serializers.FileField(help_text="The audio file (wav, mp3, flac, ogg, m4a, webm).")


class JobCreateFromUploadInput(JobOptionsInput):
    upload_id = serializers.UUIDField(help_text="The id returned by POST /api/v1/uploads.")


class JobListFilterInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    page = serializers.IntegerField(required=False, min_value=1)
    # Larger sizes are capped at 100 by the paginator rather than refused.
    page_size = serializers.IntegerField(
        required=False, min_value=1, help_text="Rows per page (default 25, at most 100)."
    )


class JobOutput(CompiledOutput, serializers.ModelSerializer):
    model = serializers.CharField(source="model_profile")
    priority = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

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
            "created_by",
            "error",
            "links",
        ]
        read_only_fields = fields

    def get_priority(self, job: TranscriptionJob) -> str:
        return {JobPriority.HIGH: "high", JobPriority.LOW: "low"}.get(job.priority, "normal")

    def get_created_by(self, job: TranscriptionJob) -> str | None:
        user = job.created_by
        return str(getattr(user, "public_id", None) or user.pk) if user else None

    def get_error(self, job: TranscriptionJob) -> dict | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message}

    def get_links(self, job: TranscriptionJob) -> dict[str, str]:
        base = f"/api/v1/jobs/{job.pk}"
        links = {"self": base, "cancel": f"{base}/cancel"}
        if job.status == JobStatus.COMPLETED:
            links["transcript"] = f"{base}/transcript"
        return links


class TranscriptFormatInput(serializers.Serializer):
    format = serializers.ChoiceField(
        choices=["json", "txt", "srt", "vtt"],
        default="json",
        help_text="json is OpenAI-compatible verbose_json (segments and words).",
    )
    download = serializers.BooleanField(default=True)


class UploadCreateInput(InputSerializer):
    filename = serializers.CharField(max_length=255, required=False, allow_blank=True)
    size_bytes = serializers.IntegerField(min_value=1)


class UploadOutput(serializers.Serializer):
    id = serializers.UUIDField()
    expires_at = serializers.DateTimeField()
    max_size = serializers.IntegerField()
    url = serializers.URLField()
    fields = serializers.DictField(child=serializers.CharField())
