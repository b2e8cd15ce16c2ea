"""The organisation's audit trail for its admins: list, filter, one event, CSV export."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Role
from apps.accounts.network import RequestMeta
from apps.accounts.tenancy import ORGANISATION_HEADER, IsHumanUser, TenantPermission, get_tenant
from apps.audit import selectors
from apps.audit.export import csv_rows
from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.drf import PAGE_PARAMETERS, errors, page_of, paginated_response

ORGANISATION_PARAMETER = OpenApiParameter(
    ORGANISATION_HEADER, str, OpenApiParameter.HEADER, required=False
)
FILTER_PARAMETERS = [
    ORGANISATION_PARAMETER,
    OpenApiParameter(
        "action", str, required=False, description="Exact action, or a prefix ending in `*`."
    ),
    OpenApiParameter("actor", OpenApiTypes.UUID, required=False, description="A user's id."),
    OpenApiParameter("target_type", str, required=False),
    OpenApiParameter("target_id", str, required=False),
    OpenApiParameter("request_id", str, required=False),
    OpenApiParameter("since", OpenApiTypes.DATETIME, required=False),
    OpenApiParameter("until", OpenApiTypes.DATETIME, required=False),
]


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    occurred_at = serializers.DateTimeField()
    action = serializers.CharField()
    actor_type = serializers.CharField()
    actor_id = serializers.UUIDField(source="actor.public_id", allow_null=True, default=None)
    actor_email = serializers.CharField()
    api_key_prefix = serializers.CharField(source="api_key.prefix", allow_null=True, default=None)
    ip_address = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()
    request_id = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    target_repr = serializers.CharField()
    metadata = serializers.JSONField()


class FilterSerializer(serializers.Serializer):
    action = serializers.CharField(max_length=64, required=False)
    actor = serializers.UUIDField(required=False, source="actor_id")
    target_type = serializers.CharField(max_length=64, required=False)
    target_id = serializers.CharField(max_length=64, required=False)
    request_id = serializers.CharField(max_length=128, required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class AuditApi(APIView):
    permission_classes = [IsAuthenticated, TenantPermission, IsHumanUser]
    required_role = Role.ADMIN

    def filters(self, request: Request) -> dict[str, Any]:
        filters = FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return dict(filters.validated_data)

    def events(self, request: Request, filters: dict[str, Any] | None = None) -> Any:
        return selectors.audit_event_list(
            organisation_id=get_tenant(request).organisation.id,
            **(self.filters(request) if filters is None else filters),
        )


class AuditEventListApi(AuditApi):
    @extend_schema(
        operation_id="audit_events_list",
        summary="The organisation's audit events, newest first (admins)",
        parameters=[
            *FILTER_PARAMETERS,
            *PAGE_PARAMETERS,
        ],
        responses={
            200: page_of("AuditEvent", AuditEventOutputSerializer),
            **errors(400, 401, 403, 404),
        },
        tags=["audit"],
    )
    def get(self, request: Request, version: str) -> Response:
        return paginated_response(
            queryset=self.events(request),
            serializer_class=AuditEventOutputSerializer,
            request=request,
            view=self,
        )


class AuditEventDetailApi(AuditApi):
    @extend_schema(
        operation_id="audit_events_retrieve",
        summary="One audit event (admins)",
        parameters=[ORGANISATION_PARAMETER],
        responses={200: AuditEventOutputSerializer, **errors(401, 403, 404)},
        tags=["audit"],
    )
    def get(self, request: Request, version: str, event_id) -> Response:
        event = selectors.audit_event_get(
            organisation_id=get_tenant(request).organisation.id, event_id=event_id
        )
        return Response(AuditEventOutputSerializer(event).data)


class AuditEventExportApi(AuditApi):
    @extend_schema(
        operation_id="audit_events_export",
        summary="Export the filtered audit events as CSV (admins)",
        description="At most AUDIT_EXPORT_MAX_ROWS rows, newest first; narrow with `since`.",
        parameters=FILTER_PARAMETERS,
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV file"),
            **errors(400, 401, 403, 404),
        },
        tags=["audit"],
    )
    def get(self, request: Request, version: str) -> StreamingHttpResponse:
        if request.method == "HEAD":
            # DRF answers HEAD with `get`: a HEAD exports nothing, so it records no export and
            # runs no query (only the headers a GET would send).
            return self._headers_only(request)
        filters = self.filters(request)
        events = self.events(request, filters)[: settings.AUDIT_EXPORT_MAX_ROWS]
        tenant = get_tenant(request)
        audit_record(
            action=AuditAction.AUDIT_EXPORTED,
            actor=request.user,
            organisation=tenant.organisation,
            target=tenant.organisation,
            meta=RequestMeta.from_request(request),
            # The validated filters only: the trail is append-only, and a query string can
            # carry anything (undeclared names, NUL bytes PostgreSQL refuses).
            metadata={"filters": {k: str(v) for k, v in filters.items()}},
        )
        return self._attachment(tenant, csv_rows(events.iterator(chunk_size=1000)))

    def _headers_only(self, request: Request) -> StreamingHttpResponse:
        self.filters(request)  # a bad filter is the same 400 as for GET
        return self._attachment(get_tenant(request), iter(()))

    @staticmethod
    def _attachment(tenant, rows) -> StreamingHttpResponse:
        name = f"audit-{tenant.organisation.id}-{timezone.now():%Y%m%dT%H%M%SZ}.csv"
        response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
