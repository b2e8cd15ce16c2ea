"""Report endpoints: request, list, poll, download, retry and delete (scoped to the org)."""

from __future__ import annotations

import logging

from django.core.files.storage import default_storage
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

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
from ..models import READ_CACHE, ReportFormat, ReportKind, ReportStatus

logger = logging.getLogger(__name__)

ERRORS = errors(400, 401, 403, 404)


class ReportInput(InputSerializer):
    kind = serializers.ChoiceField(choices=ReportKind.choices)
    format = serializers.ChoiceField(choices=ReportFormat.choices)
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
    download_url = serializers.SerializerMethodField()

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
        filters = ReportFilter(data=request.query_params)
        filters.is_valid(raise_exception=True)
        kind = filters.validated_data.get("kind")
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
            organisation=get_tenant(request).organisation, report_id=report_id
        )


class ReportDetailView(_ReportView):
    @extend_schema(operation_id="reports_get", responses={200: ReportOutput, **ERRORS})
    def get(self, request: Request, version: str, report_id) -> Response:
        return Response(ReportOutput(self.report(request, report_id)).data)

    @extend_schema(operation_id="reports_delete", responses={204: None, **ERRORS})
    def delete(self, request: Request, version: str, report_id) -> Response:
        services.report_delete(report=self.report(request, report_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReportRetryView(_ReportView):
    @extend_schema(
        operation_id="reports_retry",
        request=None,
        responses={
            202: ReportOutput,
            **errors(400, 401, 403, 404, descriptions={409: "Not failed."}),
        },
    )
    def post(self, request: Request, version: str, report_id) -> Response:
        report = services.report_retry(report=self.report(request, report_id))
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
