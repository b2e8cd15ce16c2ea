"""Audio job endpoints. Views validate, call one service or selector, and serialize."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Role
from apps.accounts.network import RequestMeta
from apps.accounts.ratelimit import PlanScopedRateThrottle
from apps.accounts.tenancy import TenantPermission, get_tenant
from apps.core.drf import PAGE_PARAMETERS, errors, page_of, paginated_response
from apps.core.exceptions import ApplicationError, ConflictError
from apps.core.http import attachment_header
from apps.core.parsers import JSONParser

from .. import editing, holds, selectors, services, speaker_names, transcripts
from .. import shares as shares_service
from ..models import READ_CACHE, JobPriority, JobStatus
from ..uploads import (
    AudioMultiPartParser,
    LimitedTemporaryFileUploadHandler,
    safe_filename,
    too_large,
    upload_was_too_large,
)
from . import serializers as s

ERRORS = errors(400, 401, 403, 404)
PRIORITIES = {"high": JobPriority.HIGH, "normal": JobPriority.NORMAL, "low": JobPriority.LOW}
IDEMPOTENCY_HEADER = "Idempotency-Key"
REVISION_HEADER = "X-Transcript-Revision"
# Declared on the 200 of the transcript GET, PATCH and revert (a response header, not a request
# parameter: drf-spectacular puts parameters with `response` under the response's `headers`).
REVISION_HEADER_PARAMETER = OpenApiParameter(
    REVISION_HEADER,
    int,
    location=OpenApiParameter.HEADER,
    response=[200],
    required=True,
    description="The transcript's revision in this response (0: the machine output); send it "
    "as `revision` (or `current_revision` to revert) with the next change.",
)


def _options(data: dict) -> services.JobOptions:
    return services.JobOptions(
        language=data.get("language", ""),
        model_profile=data.get("model", ""),
        task=data["task"],
        word_timestamps=data["word_timestamps"],
        initial_prompt=data.get("initial_prompt", ""),
        hotwords=data.get("hotwords", ""),
        priority=PRIORITIES[data["priority"]],
        redact_pii=tuple(data.get("redact_pii") or ()),
        redact_pii_audio=data.get("redact_pii_audio", False),
        redact_pii_sub=data.get("redact_pii_sub", ""),
        quality_rerun=data.get("quality_rerun", False),
        diarize=data.get("diarize", False),
        speakers_expected=data.get("speakers_expected"),
        max_speakers=data.get("max_speakers"),
    )


def _idempotency_key(request: Request, data: dict) -> str:
    key = (request.headers.get(IDEMPOTENCY_HEADER) or data.get("idempotency_key") or "").strip()
    if len(key) > 200:
        raise ApplicationError(
            "Idempotency keys are limited to 200 characters.", code="invalid_idempotency_key"
        )
    return key


class JobListCreateView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]
    parser_classes = [AudioMultiPartParser, JSONParser]
    throttle_scope = "uploads"

    def get_throttles(self):
        # Uploads have their own, stricter rate; listing counts only against the general rate.
        throttles = super().get_throttles()
        if self.request.method != "POST":
            throttles = [t for t in throttles if not isinstance(t, PlanScopedRateThrottle)]
        return throttles

    def initialize_request(self, request, *args, **kwargs):
        request.upload_handlers = [LimitedTemporaryFileUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        operation_id="jobs_list",
        parameters=[s.JobListFilterInput],
        responses={200: page_of("Job", s.JobOutput), **ERRORS},
    )
    def get(self, request: Request, version: str) -> Response:
        filters = s.JobListFilterInput(data=request.query_params)
        filters.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        return paginated_response(
            queryset=lambda: selectors.job_list(
                organisation=tenant.organisation,
                status=filters.validated_data.get("status"),
                created_after=filters.validated_data.get("created_after"),
                created_before=filters.validated_data.get("created_before"),
                flagged=filters.validated_data.get("flagged"),
                legal_hold=filters.validated_data.get("legal_hold"),
                q=filters.validated_data.get("q"),
            ),
            serializer_class=s.JobOutput,
            request=request,
            view=self,
            read_cache=READ_CACHE,
            scope=tenant.organisation.id,
            # v4: hotwords and the queue link (v3: redaction and legal hold fields, and the
            # legal_hold filter; v2: quality fields, flagged and q): pages an older release
            # cached are never served. The namespace stays, so invalidation reaches both.
            key_prefix="v4:",
        )

    @extend_schema(
        operation_id="jobs_create",
        request={
            "multipart/form-data": s.JobCreateMultipartInput,
            "application/json": s.JobCreateFromUploadInput,
        },
        parameters=[
            OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER, required=False)
        ],
        responses={
            201: s.JobOutput,
            200: OpenApiResponse(s.JobOutput, description="Replay of an idempotency key"),
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    402: "Monthly audio quota exhausted.",
                    409: "Upload already used.",
                    410: "The presigned upload expired (`upload_expired`): ask for a new one.",
                    413: "File too large or too long.",
                    415: "Not a supported audio format.",
                },
            ),
        },
        description=(
            "Send the audio as multipart `file`, or reference a presigned upload with "
            "`upload_id` (JSON). The file is validated (format sniffed from content, decoded "
            "duration measured) before the job exists."
        ),
    )
    def post(self, request: Request, version: str) -> Response:
        tenant = get_tenant(request)
        # Reading `data` parses the body; the upload handler flags a body over the limit then.
        request.data  # noqa: B018
        if upload_was_too_large(request._request):
            raise too_large(settings.AUDIO_MAX_UPLOAD_BYTES)
        if request.content_type.startswith("multipart/"):
            data = s.JobCreateMultipartInput(data=request.data)
            data.is_valid(raise_exception=True)
            upload = data.validated_data["file"]
            path = _temporary_path(upload)
            job, created = services.job_create_from_file(
                organisation=tenant.organisation,
                user=request.user,
                path=path,
                original_filename=safe_filename(upload.name),
                size_bytes=upload.size,
                options=_options(data.validated_data),
                idempotency_key=_idempotency_key(request, data.validated_data),
            )
        else:
            data = s.JobCreateFromUploadInput(data=request.data)
            data.is_valid(raise_exception=True)
            job, created = services.job_create_from_upload(
                organisation=tenant.organisation,
                user=request.user,
                upload_id=data.validated_data["upload_id"],
                options=_options(data.validated_data),
                idempotency_key=_idempotency_key(request, data.validated_data),
            )
        return Response(
            s.JobOutput(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


def _temporary_path(upload) -> str:
    if hasattr(upload, "temporary_file_path"):
        return upload.temporary_file_path()
    raise ApplicationError("The upload could not be read; send it again.", code="upload_failed")


def job_output(organisation, job_id: str) -> dict:
    """The organisation's job as `JobDetailOutput` renders it (404 otherwise), from the read
    cache."""

    def render() -> dict:
        return s.JobDetailOutput(selectors.job_get(organisation=organisation, job_id=job_id)).data

    return READ_CACHE.get_or_load(organisation.id, f"job:v4:{job_id}", render)


class JobDetailView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(operation_id="jobs_retrieve", responses={200: s.JobDetailOutput, **ERRORS})
    def get(self, request: Request, version: str, job_id: str) -> Response:
        return Response(job_output(get_tenant(request).organisation, job_id))

    @extend_schema(
        operation_id="jobs_destroy",
        responses={204: None, **ERRORS},
        description="Delete the job, its transcript and its audio. A job under legal hold "
        "cannot be deleted (409 `legal_hold`).",
    )
    def delete(self, request: Request, version: str, job_id: str) -> Response:
        job = selectors.job_get(organisation=get_tenant(request).organisation, job_id=job_id)
        services.job_delete(job=job)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobQueueView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(
        operation_id="jobs_queue",
        responses={200: s.JobQueueOutput, **ERRORS},
        description="Where a queued job stands: waiting for one of its organisation's places, "
        "or on the shared queue with how many jobs are served first and a rough estimate of "
        "when it starts. Read live (not cached); poll it no more than every few seconds.",
    )
    def get(self, request: Request, version: str, job_id: str) -> Response:
        answer = selectors.job_queue_position(
            organisation=get_tenant(request).organisation, job_id=job_id
        )
        return Response(s.JobQueueOutput(answer).data)


class JobLegalHoldView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]
    # Owners and admins, signed in (API keys never have the admin role).
    required_role = Role.ADMIN

    @extend_schema(
        operation_id="jobs_legal_hold_place",
        request=s.LegalHoldInput,
        responses={
            200: s.JobOutput,
            **errors(400, 401, 403, 404, descriptions={403: "Owners and admins only."}),
        },
        description=(
            "Place a legal hold: until it is released, the job and its audio cannot be deleted "
            "(by members, audio retention, or the organisation's deletion). Holding a held job "
            "changes nothing. Audited with its reason."
        ),
    )
    def post(self, request: Request, version: str, job_id: str) -> Response:
        data = s.LegalHoldInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        job, _placed = holds.legal_hold_place(
            organisation=tenant.organisation,
            job_id=job_id,
            user=tenant.user,
            reason=data.validated_data["reason"],
            meta=RequestMeta.from_request(request),
        )
        return Response(s.JobOutput(job).data)

    @extend_schema(
        operation_id="jobs_legal_hold_release",
        request=s.LegalHoldReleaseInput,
        responses={
            200: s.JobOutput,
            **errors(400, 401, 403, 404, descriptions={409: "The job is not held (`not_held`)."}),
        },
        description="Release the job's legal hold (audited; the reason is optional).",
    )
    def delete(self, request: Request, version: str, job_id: str) -> Response:
        data = s.LegalHoldReleaseInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        job = holds.legal_hold_release(
            organisation=tenant.organisation,
            job_id=job_id,
            user=tenant.user,
            reason=data.validated_data.get("reason", ""),
            meta=RequestMeta.from_request(request),
        )
        return Response(s.JobOutput(job).data)


class JobShareListCreateView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(
        operation_id="jobs_shares_list",
        responses={200: s.ShareOutput(many=True), **ERRORS},
        description="The job's share links, newest first (never their tokens).",
    )
    def get(self, request: Request, version: str, job_id: str) -> Response:
        shares = shares_service.share_list(
            organisation=get_tenant(request).organisation, job_id=job_id
        )
        return Response(s.ShareOutput(shares, many=True).data)

    @extend_schema(
        operation_id="jobs_shares_create",
        request=s.ShareCreateInput,
        responses={
            201: s.ShareCreatedOutput,
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    403: "Viewers cannot share, or the organisation switched share links off "
                    "(`sharing_disabled`).",
                    409: "The job is not completed (`transcript_not_ready`), or has "
                    "SHARE_LINKS_PER_JOB live links (`too_many_shares`).",
                },
            ),
        },
        description=(
            "A read-only link to the transcript for someone without an account. The `url` is "
            "answered this once; the link expires after `expires_in_days` and can be revoked. "
            "Each use is counted and audited."
        ),
    )
    def post(self, request: Request, version: str, job_id: str) -> Response:
        data = s.ShareCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        share, token = shares_service.share_create(
            organisation=tenant.organisation,
            job_id=job_id,
            user=request.user,
            api_key=tenant.api_key,
            expires_in_days=data.validated_data["expires_in_days"],
            note=data.validated_data["note"],
            meta=RequestMeta.from_request(request),
        )
        body = {**s.ShareOutput(share).data, "url": shares_service.share_url(token)}
        return Response(body, status=status.HTTP_201_CREATED)


class JobShareDetailView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(
        operation_id="jobs_shares_revoke",
        responses={204: None, **ERRORS},
        description="Revoke a share link: its next use is 404. Revoking twice is no error.",
    )
    def delete(self, request: Request, version: str, job_id: str, share_id: str) -> Response:
        tenant = get_tenant(request)
        shares_service.share_revoke(
            organisation=tenant.organisation,
            job_id=job_id,
            share_id=share_id,
            user=request.user,
            api_key=tenant.api_key,
            meta=RequestMeta.from_request(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class SharedTranscriptView(APIView):
    """A transcript opened by its share link: no account, no credentials (a stray Authorization
    header is ignored, never a 401), the anonymous per-address rate."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def perform_content_negotiation(self, request, force=False):
        renderer = self.get_renderers()[0]
        return renderer, renderer.media_type

    @extend_schema(
        operation_id="shared_transcript",
        auth=[],
        parameters=[s.SharedTranscriptFormatInput],
        responses={
            (200, "application/json"): s.SharedTranscriptOutput,
            (200, "text/plain"): OpenApiTypes.STR,
            (200, "text/vtt"): OpenApiTypes.STR,
            **errors(
                400, 404, descriptions={404: "Not a live link (`share_not_found`), whatever why."}
            ),
        },
        description=(
            "The transcript behind a share link: JSON (text and timed segments), or `format` "
            "txt, srt or vtt. Never cached by browsers or proxies, never indexed."
        ),
    )
    def get(self, request: Request, version: str, token: str) -> HttpResponse:
        params = s.SharedTranscriptFormatInput(data=request.query_params)
        params.is_valid(raise_exception=True)
        share = shares_service.shared_job(
            token=token,
            meta=RequestMeta.from_request(request),
            # A HEAD (a link preview's probe) is answered, not counted as a reading.
            count=request.method != "HEAD",
        )
        job = share.job
        fmt = params.validated_data["format"]
        if fmt == "json":
            transcript = job.transcript
            body = s.SharedTranscriptOutput(
                {
                    "filename": job.original_filename,
                    "duration_seconds": job.duration_seconds,
                    "language": transcript.language,
                    "revision": transcript.revision,
                    "text": transcript.text,
                    "segments": [
                        {"start": seg["start"], "end": seg["end"], "text": seg["text"]}
                        for seg in transcript.segments
                    ],
                    "expires_at": share.expires_at,
                }
            ).data
            response: HttpResponse = Response(body)
        else:
            rendered = transcripts.transcript_render(job_id=job.pk, fmt=fmt, pretty=False)
            response = HttpResponse(rendered.body, content_type=rendered.media_type)
        response["Cache-Control"] = "private, no-store"
        response["X-Robots-Tag"] = "noindex, nofollow"
        response["Referrer-Policy"] = "no-referrer"
        return response


class JobCancelView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(
        operation_id="jobs_cancel",
        request=None,
        responses={
            200: s.JobOutput,
            **errors(400, 401, 403, 404, descriptions={409: "Already final."}),
        },
    )
    def post(self, request: Request, version: str, job_id: str) -> Response:
        job = selectors.job_get(organisation=get_tenant(request).organisation, job_id=job_id)
        return Response(s.JobOutput(services.job_cancel(job=job)).data)


class JobRetranscribeView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]
    # A new job, like an upload: the same stricter rate.
    throttle_scope = "uploads"

    @extend_schema(
        operation_id="jobs_retranscribe",
        request=s.JobRetranscribeInput,
        parameters=[
            OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER, required=False)
        ],
        responses={
            201: s.JobOutput,
            200: OpenApiResponse(s.JobOutput, description="Replay of an idempotency key"),
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    402: "Monthly audio quota exhausted: the minutes count again.",
                    403: "Viewers (and viewer API keys) cannot create jobs.",
                    409: "The job is still queued or processing (`job_active`), or its audio "
                    "is no longer stored (`audio_missing`: deleted by retention).",
                },
            ),
        },
        description=(
            "Transcribe a finished job's audio again with new options (a larger `model`, the "
            "`language` declared, `hotwords` naming the people and terms): a new job, with its "
            "own copy of the audio, linked by `retranscribed_from`. Its minutes count against "
            "the quota again."
        ),
    )
    def post(self, request: Request, version: str, job_id: str) -> Response:
        data = s.JobRetranscribeInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        job, created = services.job_retranscribe(
            organisation=tenant.organisation,
            user=request.user,
            source_id=job_id,
            options=_options(data.validated_data),
            idempotency_key=_idempotency_key(request, data.validated_data),
            api_key=tenant.api_key,
            meta=RequestMeta.from_request(request),
        )
        return Response(
            s.JobOutput(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class TranscriptView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    def perform_content_negotiation(self, request, force=False):
        # `?format=` names the transcript format here, not a DRF renderer; the body is rendered
        # by apps.audio_jobs.formats and errors by the JSON renderer.
        renderer = self.get_renderers()[0]
        return renderer, renderer.media_type

    @extend_schema(
        operation_id="jobs_transcript",
        parameters=[s.TranscriptFormatInput, REVISION_HEADER_PARAMETER],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/plain"): OpenApiTypes.STR,
            (200, "text/vtt"): OpenApiTypes.STR,
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    400: "Invalid parameters, or a `revision` past the current one "
                    "(`invalid_revision`).",
                    409: "The job has no transcript yet.",
                },
            ),
        },
        description=(
            "The transcript in `format`. `X-Transcript-Revision` names the revision served "
            "(0: the machine output; send it back as `revision` when you edit). `?revision=N` "
            "serves an earlier revision, rebuilt from the history."
        ),
    )
    def get(self, request: Request, version: str, job_id: str) -> HttpResponse:
        params = s.TranscriptFormatInput(data=request.query_params)
        params.is_valid(raise_exception=True)
        job = job_output(get_tenant(request).organisation, job_id)
        if job["status"] != JobStatus.COMPLETED:
            raise ConflictError(
                f"The job is {job['status']}; a transcript exists once it is completed.",
                code="transcript_not_ready",
            )
        fmt, download = params.validated_data["format"], params.validated_data["download"]
        rendered = transcripts.transcript_render(
            job_id=job["id"],
            fmt=fmt,
            pretty=download,
            revision=params.validated_data.get("revision"),
        )
        response = HttpResponse(rendered.body, content_type=rendered.media_type)
        stem = Path(safe_filename(job["original_filename"])).stem or "transcript"
        if download:
            response["Content-Disposition"] = attachment_header(
                f"{stem}.{rendered.extension}", fallback="transcript"
            )
        response[REVISION_HEADER] = str(rendered.revision)
        # Transcripts can be edited: a browser or proxy must not reuse an old copy unasked.
        response["Cache-Control"] = "private, no-cache"
        return response

    @extend_schema(
        operation_id="jobs_transcript_edit",
        request=s.TranscriptEditInput,
        parameters=[REVISION_HEADER_PARAMETER],
        responses={
            200: s.TranscriptChangeOutput,
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    400: "Invalid body (`validation_error`), a segment id the transcript does "
                    "not have (`unknown_segment`), or no change (`transcript_unchanged`).",
                    403: "Viewers (and viewer API keys) cannot edit.",
                    409: "The job is not completed (`transcript_not_ready`), `revision` is "
                    "not the current one (`transcript_revision_conflict`, "
                    "`details.current_revision`), or the transcript has "
                    "`TRANSCRIPT_MAX_REVISIONS` revisions (`transcript_revision_limit`; it can "
                    "still be reverted).",
                },
            ),
        },
        description=(
            "Correct the text of some segments. Words that survive keep their timestamps; new "
            "words are timed inside the gap between their neighbours and marked `edited`. "
            "Written as a new revision (`GET .../transcript/revisions`)."
        ),
    )
    def patch(self, request: Request, version: str, job_id: str) -> Response:
        data = s.TranscriptEditInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        job = selectors.job_get(organisation=tenant.organisation, job_id=job_id)
        transcript, written = editing.transcript_edit(
            job=job,
            revision=data.validated_data["revision"],
            segments=data.validated_data["segments"],
            note=data.validated_data["note"],
            user=tenant.user,
            api_key=tenant.api_key,
            meta=RequestMeta.from_request(request),
        )
        return _changed(transcript, written)


def _changed(transcript, written) -> Response:
    """The transcript after an edit or revert, with the revision to send back next."""
    return Response(
        s.transcript_change_output(transcript, written),
        headers={REVISION_HEADER: str(transcript.revision)},
    )


class TranscriptRevisionListView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(
        operation_id="jobs_transcript_revisions",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of("TranscriptRevision", s.TranscriptRevisionOutput), **ERRORS},
        description="The transcript's edits and reverts, newest first (revision 0, the "
        "machine output, is not a row).",
    )
    def get(self, request: Request, version: str, job_id: str) -> Response:
        tenant = get_tenant(request)
        revisions = selectors.transcript_revision_list(
            organisation=tenant.organisation, job_id=job_id
        )
        return paginated_response(
            queryset=revisions,
            serializer_class=s.TranscriptRevisionOutput,
            request=request,
            view=self,
        )


class TranscriptRevertView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(
        operation_id="jobs_transcript_revert",
        request=s.TranscriptRevertInput,
        parameters=[REVISION_HEADER_PARAMETER],
        responses={
            200: s.TranscriptChangeOutput,
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    400: "Invalid body, `revision` not earlier than the current one "
                    "(`invalid_revision`), or already that text (`transcript_unchanged`).",
                    403: "Viewers (and viewer API keys) cannot revert.",
                    409: "The job is not completed, `current_revision` is stale "
                    "(`transcript_revision_conflict`), or the transcript has twice "
                    "`TRANSCRIPT_MAX_REVISIONS` revisions (`transcript_revision_limit`: reverts "
                    "stay possible past the edit limit, up to twice it).",
                },
            ),
        },
        description=(
            "Restore the transcript as it was at `revision` (0: the machine output), written "
            "as a new revision: the history is kept."
        ),
    )
    def post(self, request: Request, version: str, job_id: str) -> Response:
        data = s.TranscriptRevertInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        job = selectors.job_get(organisation=tenant.organisation, job_id=job_id)
        transcript, written = editing.transcript_revert(
            job=job,
            revision=data.validated_data["revision"],
            current_revision=data.validated_data["current_revision"],
            note=data.validated_data["note"],
            user=tenant.user,
            api_key=tenant.api_key,
            meta=RequestMeta.from_request(request),
        )
        return _changed(transcript, written)


class TranscriptSpeakersView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]

    @extend_schema(
        operation_id="jobs_transcript_speakers",
        responses={200: s.SpeakerListOutput, **ERRORS},
        description="The speakers diarization found (`diarize: true`), with their speaking "
        "time and the names given to them; an empty list when the job has none.",
    )
    def get(self, request: Request, version: str, job_id: str) -> Response:
        job = selectors.job_get(organisation=get_tenant(request).organisation, job_id=job_id)
        return Response(s.speaker_list_output(job))

    @extend_schema(
        operation_id="jobs_transcript_speakers_name",
        request=s.SpeakerNamesInput,
        responses={
            200: s.SpeakerListOutput,
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    400: "Invalid body, or a label the transcript does not have "
                    "(`unknown_speaker`, `details.speakers`).",
                    403: "Viewers (and viewer API keys) cannot name speakers.",
                    409: "The job is not completed (`transcript_not_ready`), or its transcript "
                    "has no speaker labels (`no_speakers`).",
                },
            ),
        },
        description="Name speakers: text, subtitles, JSON (`speakers`), reports and share links "
        "show the names; the labels on segments and words stay. Other names are kept.",
    )
    def patch(self, request: Request, version: str, job_id: str) -> Response:
        data = s.SpeakerNamesInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        job = speaker_names.speaker_names_set(
            organisation=tenant.organisation,
            job_id=job_id,
            names=data.validated_data["names"],
            user=tenant.user,
            api_key=tenant.api_key,
            meta=RequestMeta.from_request(request),
        )
        return Response(s.speaker_list_output(job))


class UploadCreateView(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]
    throttle_scope = "uploads"

    @extend_schema(
        operation_id="uploads_create",
        request=s.UploadCreateInput,
        responses={
            201: s.UploadOutput,
            **errors(400, 401, 403, 404, descriptions={409: "No S3 storage.", 413: "Too large."}),
        },
        description=(
            "A presigned POST for one file: POST `fields` plus `file` to `url` (the policy fixes "
            "the key and a size range), then create the job with `upload_id`."
        ),
    )
    def post(self, request: Request, version: str) -> Response:
        data = s.UploadCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        upload, ticket = services.upload_create(
            organisation=get_tenant(request).organisation,
            user=request.user,
            filename=safe_filename(data.validated_data.get("filename", "")),
            size_bytes=data.validated_data["size_bytes"],
        )
        output = {
            "id": upload.pk,
            "expires_at": upload.expires_at,
            "max_size": upload.max_size,
            **ticket,
        }
        return Response(s.UploadOutput(output).data, status=status.HTTP_201_CREATED)
