"""Input of OpenAI's audio endpoints, validated like `POST /api/v1/jobs`.

The serializers extend the jobs API's `JobOptionsInput`, so `language` is checked the same way
(normalised, and refused when the model it would run on lacks it) and a `model` naming a
LexisCore profile is checked against the language; only OpenAI's names and fields are added.
Strict like every input: a field OpenAI defines that this server does not implement (`stream`,
`include[]`, `chunking_strategy`) is refused by name rather than silently ignored.
"""

from __future__ import annotations

from rest_framework import serializers

from apps.audio_jobs.api.serializers import MODEL_CHOICES, JobOptionsInput

from ..services import RESPONSE_FORMATS

OPENAI_MODEL = "whisper-1"
PROFILES = [name for name, _label in MODEL_CHOICES if name]
GRANULARITIES_FIELD = "timestamp_granularities[]"
MODEL_HELP = (
    f"`{OPENAI_MODEL}` (or empty): choose the model from the language; or a LexisCore model "
    f"profile: {', '.join(PROFILES)}."
)


# Named in SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] (a component named after the field would
# carry its brackets).
GRANULARITIES = ("word", "segment")


class TranslationInput(JobOptionsInput):
    """OpenAI's translation form: the audio, translated to English."""

    # The jobs API's options that OpenAI's API does not have.
    task = None
    word_timestamps = None
    initial_prompt = None
    priority = None
    idempotency_key = None
    language = None

    file = serializers.FileField(help_text="The audio file (wav, mp3, flac, ogg, m4a, webm).")
    model = serializers.CharField(
        required=False, allow_blank=True, max_length=64, help_text=MODEL_HELP
    )
    prompt = serializers.CharField(
        required=False, allow_blank=True, max_length=1000, help_text="Vocabulary hints / context."
    )
    response_format = serializers.ChoiceField(choices=RESPONSE_FORMATS, default="json")
    temperature = serializers.FloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="Accepted for compatibility; the engine uses its own temperature fallback.",
    )

    def validate_model(self, value: str) -> str:
        value = value.strip()
        if value in ("", OPENAI_MODEL):
            return ""  # choose automatically, as the jobs API does
        if value not in PROFILES:
            raise serializers.ValidationError(
                f"Unknown model {value!r}; use {OPENAI_MODEL!r} or one of: {', '.join(PROFILES)}."
            )
        return value


class TranscriptionInput(TranslationInput):
    """OpenAI's transcription form."""

    language = JobOptionsInput._declared_fields["language"]

    def get_fields(self):
        fields = super().get_fields()
        # OpenAI SDKs send the list as repeated `timestamp_granularities[]` form fields.
        fields[GRANULARITIES_FIELD] = serializers.MultipleChoiceField(
            choices=GRANULARITIES,
            required=False,
            source="timestamp_granularities",
            help_text="`word` and/or `segment` (default `segment`); only with `verbose_json`.",
        )
        return fields

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if attrs.get("timestamp_granularities") and attrs["response_format"] != "verbose_json":
            raise serializers.ValidationError(
                {
                    GRANULARITIES_FIELD: [
                        "Timestamp granularities need response_format verbose_json."
                    ]
                }
            )
        return attrs
