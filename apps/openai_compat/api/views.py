"""OpenAI's audio API (`POST /audio/transcriptions`, `/audio/translations`) over LexisCore jobs.

An OpenAI SDK pointed at `https://<host>/api/openai/v1` with a LexisCore API key works unchanged.
Views validate, call one service and render; errors come in OpenAI's shape from this app's
exception handler (the project's handler, reshaped).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.authentication import JWTAuthentication
from apps.accounts.tenancy import TenantPermission, get_tenant
from apps.audio_jobs.models import JobTask
from apps.audio_jobs.services import JobOptions
from apps.audio_jobs.uploads import (
    AudioMultiPartParser,
    LimitedTemporaryFileUploadHandler,
    UploadTooLarge,
    safe_filename,
    upload_was_too_large,
)
from apps.core.exceptions import ApplicationError, NotFoundError

from .. import services, waiting
from ..authentication import BearerApiKeyAuthentication
from ..exceptions import JOB_ID_HEADER, exception_handler
from . import serializers as s

TAG = "openai-compatible"


def upload_limit() -> int:
    return min(settings.OPENAI_COMPAT_MAX_UPLOAD_BYTES, settings.AUDIO_MAX_UPLOAD_BYTES)


class OpenAIUploadHandler(LimitedTemporaryFileUploadHandler):
    """The jobs API's streaming upload (to disk, cut off at the limit) at this API's limit."""

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.limit = upload_limit()


OpenAIErrorSerializer = inline_serializer(
    name="OpenAIError",
    fields={
        "error": inline_serializer(
            name="OpenAIErrorDetail",
            fields={
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "param": serializers.CharField(allow_null=True),
                "code": serializers.CharField(),
                "request_id": serializers.CharField(allow_null=True),
                "details": serializers.JSONField(),
            },
        )
    },
)

_ERRORS = {
    400: "Invalid input: `param` names the field (`file` for audio that cannot be read or a "
    "failed job's media error).",
    401: "Missing or invalid credentials (`Authorization: Bearer <API key or access token>`).",
    403: "The caller's role cannot create jobs (viewers).",
    409: "The job was cancelled or deleted while the request waited.",
    413: "The file is larger than `OPENAI_COMPAT_MAX_UPLOAD_BYTES`.",
    415: "Not multipart/form-data, or not a supported audio format.",
    429: "Rate limited (`Retry-After`), or the monthly audio quota is used up "
    "(`quota_exceeded`, type `insufficient_quota`).",
    500: "The job failed on the server (`code` is the job's error code).",
    503: "This server already has `OPENAI_COMPAT_MAX_WAITING` requests waiting; retry after "
    "`Retry-After`.",
    504: "The job did not finish within `OPENAI_COMPAT_WAIT_SECONDS`; it goes on: the message "
    "and `X-LexisCore-Job-Id` name it (`GET /api/v1/jobs/{id}`).",
}

_JSON_BODY = inline_serializer(
    name="OpenAITranscription",
    fields={
        "text": serializers.CharField(),
        "task": serializers.CharField(required=False),
        "language": serializers.CharField(required=False),
        "duration": serializers.FloatField(required=False),
        "segments": serializers.ListField(child=serializers.DictField(), required=False),
        "words": serializers.ListField(child=serializers.DictField(), required=False),
    },
)


def _schema(operation_id: str, request: Any, description: str):
    return extend_schema(
        operation_id=operation_id,
        tags=[TAG],
        request={"multipart/form-data": request},
        responses={
            (200, "application/json"): OpenApiResponse(
                _JSON_BODY, description="`json`: `{text}`; `verbose_json`: OpenAI's verbose form."
            ),
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="`text`"),
            (200, "application/x-subrip"): OpenApiResponse(OpenApiTypes.STR, description="`srt`"),
            (200, "text/vtt"): OpenApiResponse(OpenApiTypes.STR, description="`vtt`"),
            **{
                (code, "application/json"): OpenApiResponse(OpenAIErrorSerializer, description=text)
                for code, text in _ERRORS.items()
            },
        },
        examples=[
            OpenApiExample(
                "error 504",
                value={
                    "error": {
                        "message": "The transcription did not finish within 300 seconds. ...",
                        "type": "server_error",
                        "param": None,
                        "code": "transcription_timeout",
                        "request_id": "4f1c2b7e9a3d4e5f8a7b6c5d4e3f2a1b",
                        "details": {"job_id": "0b5d1e8c-3f0a-4d5e-9a1b-2c3d4e5f6a7b"},
                    }
                },
                status_codes=["504"],
                response_only=True,
            )
        ],
        description=description,
    )


class _AudioView(APIView):
    """Shared by both endpoints: auth, parsing, limits, error shape and rendering."""

    authentication_classes = [BearerApiKeyAuthentication, JWTAuthentication]
    permission_classes = [IsAuthenticated, TenantPermission]
    parser_classes = [AudioMultiPartParser]
    renderer_classes = [JSONRenderer]
    versioning_class = None
    throttle_scope = "uploads"
    input_class: type[s.TranslationInput] = s.TranslationInput
    task = JobTask.TRANSCRIBE

    def get_exception_handler(self):
        return exception_handler

    def initialize_request(self, request, *args, **kwargs):
        request.upload_handlers = [OpenAIUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    def perform_content_negotiation(self, request, force=False):
        # `response_format` chooses the body; OpenAI clients send any Accept.
        renderer = self.get_renderers()[0]
        return renderer, renderer.media_type

    def post(self, request: Request) -> HttpResponse:
        tenant = get_tenant(request)
        with waiting.waiting_slot():
            # Reading `data` parses the body; the upload handler flags a body over the limit.
            request.data  # noqa: B018
            if upload_was_too_large(request._request):
                raise _too_large()
            data = self.input_class(data=request.data)
            data.is_valid(raise_exception=True)
            values = data.validated_data
            granularities = values.get("timestamp_granularities") or set()
            upload = values["file"]
            result = services.transcription_create_and_wait(
                organisation=tenant.organisation,
                user=request.user,
                path=_temporary_path(upload),
                original_filename=safe_filename(upload.name),
                size_bytes=upload.size,
                options=JobOptions(
                    language=values.get("language", ""),
                    model_profile=values.get("model", ""),
                    task=self.task,
                    # Word timing costs time: only for words asked for, or to time subtitles.
                    word_timestamps="word" in granularities
                    or values["response_format"] in ("srt", "vtt"),
                    initial_prompt=values.get("prompt", ""),
                ),
                output=services.OutputOptions(
                    response_format=values["response_format"],
                    words="word" in granularities,
                    segments=not granularities or "segment" in granularities,
                ),
            )
        headers = {JOB_ID_HEADER: str(result.job_id)}
        if isinstance(result.body, dict):
            return Response(result.body, headers=headers)
        response = HttpResponse(result.body, content_type=result.media_type)
        response[JOB_ID_HEADER] = headers[JOB_ID_HEADER]
        return response


def _too_large() -> UploadTooLarge:
    limit = upload_limit()
    return UploadTooLarge(
        f"The file is larger than this API's {limit // (1024 * 1024)} MB limit. Send larger "
        "files to POST /api/v1/jobs.",
        details={"max_bytes": limit, "param": "file"},
    )


def _temporary_path(upload) -> str:
    if hasattr(upload, "temporary_file_path"):
        return upload.temporary_file_path()
    raise ApplicationError(
        "The upload could not be read; send it again.",
        code="upload_failed",
        details={"param": "file"},
    )


class TranscriptionView(_AudioView):
    input_class = s.TranscriptionInput
    task = JobTask.TRANSCRIBE

    @_schema(
        "openai_audio_transcriptions",
        s.TranscriptionInput,
        "OpenAI's `POST /v1/audio/transcriptions`: the file becomes an ordinary job (quota, "
        "fair queue, jobs list) and the request waits for its transcript, up to "
        "`OPENAI_COMPAT_WAIT_SECONDS`. Authenticate with `Authorization: Bearer <API key>`.",
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)


class TranslationView(_AudioView):
    input_class = s.TranslationInput
    task = JobTask.TRANSLATE

    @_schema(
        "openai_audio_translations",
        s.TranslationInput,
        "OpenAI's `POST /v1/audio/translations`: like transcriptions, translated to English "
        "(the language is detected; English-only models cannot translate).",
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)


def _model_object(model_id: str) -> dict[str, Any]:
    # No creation time is kept for a model (its files ship in a package): 0, which the SDKs take.
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "lexiscore"}


MODEL_OBJECT = inline_serializer(
    "OpenAIModel",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(default="model"),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
    },
)
MODEL_LIST = inline_serializer(
    "OpenAIModelList",
    {
        "object": serializers.CharField(default="list"),
        "data": serializers.ListField(child=MODEL_OBJECT.__class__()),
    },
)


class _ModelsView(APIView):
    """OpenAI's `GET /v1/models`: what `model` may name here (SDKs and tools list them)."""

    authentication_classes = [BearerApiKeyAuthentication, JWTAuthentication]
    permission_classes = [IsAuthenticated, TenantPermission]
    renderer_classes = [JSONRenderer]
    versioning_class = None

    def get_exception_handler(self):
        return exception_handler


class ModelListView(_ModelsView):
    @extend_schema(
        operation_id="openai_models_list",
        responses={200: MODEL_LIST},
        description=f"OpenAI's `GET /v1/models`: `{s.OPENAI_MODEL}` (the model chosen from "
        "the language) and each LexisCore model profile, all usable as `model`.",
        tags=[TAG],
    )
    def get(self, request: Request) -> Response:
        ids = [s.OPENAI_MODEL, *s.PROFILES]
        return Response({"object": "list", "data": [_model_object(i) for i in ids]})


class ModelDetailView(_ModelsView):
    @extend_schema(
        operation_id="openai_models_retrieve",
        responses={200: MODEL_OBJECT},
        description="OpenAI's `GET /v1/models/{model}`; 404 `model_not_found` for another.",
        tags=[TAG],
    )
    def get(self, request: Request, model: str) -> Response:
        if model not in (s.OPENAI_MODEL, *s.PROFILES):
            raise NotFoundError(f"The model {model!r} does not exist.", code="model_not_found")
        return Response(_model_object(model))
