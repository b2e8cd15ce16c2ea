"""Report endpoints: request, list, poll, download, retry and delete (scoped to the org).

Data exports are reports of kind `export`, asked for at `POST /reports/exports/` and then read,
downloaded and deleted like any report, but seen only by whom they belong to
(`apps.reports.selectors`): a member export by its member, an organisation export by owners and
admins, neither by API keys. Whoever may see an export may also delete and retry it, viewers
included (their own member export); other reports' writes need the member role.
"""

from __future__ import annotations

import logging

from django.core.files.storage import default_storage
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Role
from apps.accounts.network import RequestMeta
from apps.accounts.ratelimit import PlanScopedRateThrottle
from apps.accounts.tenancy import TenantPermission, get_tenant
from apps.core.drf import (
    PAGE_PARAMETERS,
    CompiledOutput,
    InputSerializer,
    errors,
    page_of,
    paginated_response,
)
from apps.core.exceptions import ConflictError, ServiceUnavailableError
from apps.core.http import attachment_header

from .. import selectors, services
from ..models import READ_CACHE, ExportScope, ReportFormat, ReportKind, ReportStatus

logger = logging.getLogger(__name__)

ERRORS = errors(400, 401, 403, 404)
# Asked for at /reports/exports/ (ExportInput), not here.
REQUESTABLE_KINDS = [(k.value, k.label) for k in ReportKind if k != ReportKind.EXPORT]
REQUESTABLE_FORMATS = [(f.value, f.label) for f in ReportFormat if f != ReportFormat.ZIP]


def _reader(request: Request) -> dict:
    """Who reads reports, for the selectors' export visibility (no user: an API key)."""
    tenant = get_tenant(request)
    return {"user": tenant.user, "role": tenant.role}


class ReportInput(InputSerializer):
    kind = serializers.ChoiceField(
        choices=REQUESTABLE_KINDS, help_text="Data exports: POST /reports/exports/."
    )
    format = serializers.ChoiceField(
        choices=REQUESTABLE_FORMATS,
        help_text="Transcript reports: pdf, json or csv. Usage reports: csv, xlsx or pdf.",
    )
    job_id = serializers.UUIDField(
        required=False, help_text="The completed job of a transcript report (only then)."
    )
    period_start = serializers.DateField(
        required=False,
        help_text="Usage reports: first day. Default: period_end minus 7 days.",
    )
    period_end = serializers.DateField(
        required=False,
        help_text="Usage reports: the day after the last (exclusive). Default: tomorrow.",
    )


class ExportInput(InputSerializer):
    scope = serializers.ChoiceField(
        choices=ExportScope.choices,
        help_text="organisation: everything the organisation holds (owners and admins); "
        "member: what it holds about you (any member, viewers included).",
    )
    include_audio = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Add the original audio files (uncompressed) under audio/, up to "
        "EXPORT_MAX_AUDIO_BYTES in all (400 `export_audio_too_large` beyond).",
    )


class ReportFilter(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ReportKind.choices, required=False)


class ReportOutput(CompiledOutput, serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.CharField()
    format = serializers.CharField()
    status = serializers.CharField()
    job_id = serializers.UUIDField(allow_null=True)
    period_start = serializers.DateField(allow_null=True)
    period_end = serializers.DateField(allow_null=True)
    attempts = serializers.IntegerField()
    error_code = serializers.CharField(
        help_text="Why a failed report failed: invalid_input, generation_failed or "
        "too_many_attempts (empty otherwise)."
    )
    error_message = serializers.CharField()
    filename = serializers.CharField()
    size_bytes = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    export_scope = serializers.SerializerMethodField(
        help_text="Data exports: organisation or member (null otherwise)."
    )
    include_audio = serializers.BooleanField(help_text="Data exports: with the audio files.")
    expires_at = serializers.DateTimeField(
        allow_null=True, help_text="Data exports: when the export and its file are deleted."
    )
    download_url = serializers.SerializerMethodField()

    def get_export_scope(self, report) -> str | None:
        return report.export_scope or None

    def get_download_url(self, report) -> str | None:
        if report.status != ReportStatus.READY:
            return None
        return f"/api/v1/reports/{report.pk}/download"


class ReportListCreateView(APIView):
    permission_classes = [TenantPermission]

    @extend_schema(
        operation_id="reports_list",
        parameters=[ReportFilter, *PAGE_PARAMETERS],
        responses={200: page_of("Report", ReportOutput), **ERRORS},
    )
    def get(self, request: Request, version: str) -> Response:
        organisation = get_tenant(request).organisation
        reader = _reader(request)
        filters = ReportFilter(data=request.query_params)
        filters.is_valid(raise_exception=True)
        kind = filters.validated_data.get("kind")
        user = reader["user"]
        if (
            user is not None
            and selectors.report_list(
                organisation=organisation, kind=ReportKind.EXPORT, **reader
            ).exists()
        ):
            # Which exports a page shows depends on who reads it: never through the
            # organisation's shared cache.
            return paginated_response(
                queryset=lambda: selectors.report_list(
                    organisation=organisation, kind=kind, **reader
                ),
                serializer_class=ReportOutput,
                request=request,
                view=self,
            )
        # The shared page is read without a reader, so it holds no export whoever asks, even
        # one created since the check above (its requester sees it on their next read): the
        # cache can never hold one reader's exports for another.
        return paginated_response(
            queryset=lambda: selectors.report_list(organisation=organisation, kind=kind),
            serializer_class=ReportOutput,
            request=request,
            view=self,
            read_cache=READ_CACHE,
            scope=organisation.id,
        )

    @extend_schema(
        operation_id="reports_create",
        request=ReportInput,
        responses={
            202: ReportOutput,
            **errors(400, 401, 403, 404, descriptions={409: "Job not completed."}),
        },
    )
    def post(self, request: Request, version: str) -> Response:
        data = ReportInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        report = services.report_request(
            organisation=tenant.organisation, user=tenant.user, **data.validated_data
        )
        return Response(ReportOutput(report).data, status=status.HTTP_202_ACCEPTED)


class _ReportView(APIView):
    permission_classes = [TenantPermission]

    def report(self, request: Request, report_id):
        return selectors.report_get(
            organisation=get_tenant(request).organisation, report_id=report_id, **_reader(request)
        )

    def report_to_change(self, request: Request, report_id):
        """The report a write (delete, retry) acts on. Writes need the member role, except on a
        data export: whoever may see one may delete or retry it (a viewer their own member
        export). An export the reader may not see is 404 as for anyone (an API key sees none);
        below member, any other report is refused as the role check refuses it (403
        `insufficient_role`)."""
        report = self.report(request, report_id)
        if report.kind != ReportKind.EXPORT and not get_tenant(request).has_role(Role.MEMBER):
            raise PermissionDenied(TenantPermission.message, code="insufficient_role")
        return report


class ReportDetailView(_ReportView):
    # Viewers reach delete for their own exports only (report_to_change).
    required_roles = {"DELETE": Role.VIEWER}

    @extend_schema(operation_id="reports_get", responses={200: ReportOutput, **ERRORS})
    def get(self, request: Request, version: str, report_id) -> Response:
        return Response(ReportOutput(self.report(request, report_id)).data)

    @extend_schema(operation_id="reports_delete", responses={204: None, **ERRORS})
    def delete(self, request: Request, version: str, report_id) -> Response:
        services.report_delete(report=self.report_to_change(request, report_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReportRetryView(_ReportView):
    # Viewers reach retry for their own exports only (report_to_change).
    required_roles = {"POST": Role.VIEWER}

    @extend_schema(
        operation_id="reports_retry",
        request=None,
        responses={
            202: ReportOutput,
            **errors(400, 401, 403, 404, descriptions={409: "Not failed."}),
        },
    )
    def post(self, request: Request, version: str, report_id) -> Response:
        report = services.report_retry(report=self.report_to_change(request, report_id))
        return Response(ReportOutput(report).data, status=status.HTTP_202_ACCEPTED)


class ReportDownloadView(_ReportView):
    @extend_schema(
        operation_id="reports_download",
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    409: "Not ready (`report_not_ready`), or its file is gone from storage "
                    "(`report_file_missing`: ask for the report again).",
                    410: "A data export past its expiry (`export_expired`).",
                    503: "The storage cannot be reached now (`storage_unavailable`).",
                },
            ),
        },
    )
    def get(self, request: Request, version: str, report_id) -> FileResponse:
        report = self.report(request, report_id)
        if report.status != ReportStatus.READY:
            raise ConflictError(
                "The report is not ready.",
                code="report_not_ready",
                details={"status": report.status},
            )
        tenant = get_tenant(request)
        services.export_download_check(
            report=report, user=tenant.user, meta=RequestMeta.from_request(request)
        )
        try:
            present = default_storage.exists(report.file_key)
            handle = default_storage.open(report.file_key, "rb") if present else None
        except Exception as exc:  # an unreachable storage (OSError, botocore errors)
            logger.error("Storage unreachable for report %s", report.pk, exc_info=True)
            raise ServiceUnavailableError(
                "The report's storage cannot be reached now. Try again shortly.",
                code="storage_unavailable",
            ) from exc
        if handle is None:
            logger.error("Ready report %s has no file %s in storage", report.pk, report.file_key)
            raise ConflictError(
                "The report's file is missing from storage. Ask for the report again.",
                code="report_file_missing",
            )
        response = FileResponse(handle, content_type=report.content_type)
        response["Content-Disposition"] = attachment_header(report.filename, fallback="report")
        response["X-Content-Type-Options"] = "nosniff"
        return response


class ExportCreateView(APIView):
    permission_classes = [TenantPermission]
    # Viewers may export their own data; the service holds the organisation scope to admins and
    # refuses API keys.
    required_role = Role.VIEWER
    throttle_scope = "exports"

    def get_throttles(self):
        throttles = super().get_throttles()
        if self.request.method != "POST":
            throttles = [t for t in throttles if not isinstance(t, PlanScopedRateThrottle)]
        return throttles

    @extend_schema(
        operation_id="reports_exports_create",
        request=ExportInput,
        responses={
            202: ReportOutput,
            **errors(
                400,
                401,
                403,
                404,
                429,
                descriptions={
                    400: "Invalid input, or the audio asked for is over EXPORT_MAX_AUDIO_BYTES "
                    "(`export_audio_too_large`).",
                    403: "An API key (`export_needs_user`), or the organisation scope asked by "
                    "a member or viewer (`insufficient_role`).",
                    409: "Your member export, or for the organisation scope the "
                    "organisation's export, is already in progress (`export_in_progress`).",
                    429: "Too many exports asked for (the plan's `exports` rate).",
                },
            ),
        },
        description="Ask for a data export (GDPR access, or an organisation leaving): a ZIP "
        "built in the background, then read, downloaded and deleted at /reports/{id}/ like any "
        "report, and deleted EXPORT_RETENTION_DAYS after it is ready. People only, not API "
        'keys. See docs/architecture.md, "Data export".',
    )
    def post(self, request: Request, version: str) -> Response:
        data = ExportInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        report = services.export_request(
            organisation=tenant.organisation,
            user=tenant.user,
            role=tenant.role,
            meta=RequestMeta.from_request(request),
            **data.validated_data,
        )
        return Response(ReportOutput(report).data, status=status.HTTP_202_ACCEPTED)
