"""Webhook endpoints of the caller's organisation (admins and owners only)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Role
from apps.accounts.network import RequestMeta
from apps.accounts.tenancy import TenantPermission, get_tenant
from apps.core.drf import PAGE_PARAMETERS, InputSerializer, errors, page_of, paginated_response

from .. import selectors, services
from ..models import SUBSCRIBABLE_EVENTS

ERRORS = errors(
    400,
    401,
    403,
    404,
    descriptions={400: "Invalid input or unsafe URL.", 403: "Admins and owners only."},
)
CREATE_ERRORS = errors(
    400,
    401,
    403,
    404,
    descriptions={
        400: "Invalid input or unsafe URL.",
        403: "Admins and owners only.",
        409: "`webhook_endpoint_limit`: the organisation has the most endpoints it may have "
        "(WEBHOOK_ENDPOINTS_PER_ORGANISATION_MAX).",
    },
)
REDELIVER_ERRORS = errors(
    400,
    401,
    403,
    404,
    409,
    descriptions={
        400: "`endpoint_disabled`: the endpoint is disabled (enable it first).",
        403: "Admins and owners only.",
        404: "No such endpoint, or no such delivery to it (`delivery_not_found`).",
        409: "`delivery_pending`: the delivery is still being tried.",
        429: "`webhook_redelivery_limit`: WEBHOOK_REDELIVERIES_PER_HOUR deliveries of the "
        "organisation were sent again in the last hour; wait `Retry-After` seconds.",
    },
)
TEST_ERRORS = errors(
    400,
    401,
    403,
    404,
    descriptions={
        400: "`endpoint_disabled`: the endpoint is disabled.",
        403: "Admins and owners only.",
        429: "`webhook_test_limit`: WEBHOOK_TEST_SENDS_PER_HOUR test events were sent to this "
        "endpoint in the last hour; wait `Retry-After` seconds (or the API's general rate).",
    },
)


class EndpointInput(InputSerializer):
    url = serializers.CharField(max_length=2000)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=SUBSCRIBABLE_EVENTS), min_length=1, max_length=20
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)


class EndpointOutput(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.CharField()
    description = serializers.CharField()
    event_types = serializers.ListField(child=serializers.CharField())
    is_active = serializers.BooleanField()
    disabled_reason = serializers.CharField()
    disabled_at = serializers.DateTimeField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class EndpointWithSecretOutput(EndpointOutput):
    secret = serializers.CharField(help_text="Shown once: store it to verify signatures.")


class AttemptOutput(serializers.Serializer):
    attempted_at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    duration_ms = serializers.IntegerField()


class DeliveryOutput(serializers.Serializer):
    id = serializers.UUIDField()
    event_id = serializers.CharField()
    event_type = serializers.CharField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    redeliveries = serializers.IntegerField(help_text="Times it was sent again by hand.")
    redelivered_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    log = AttemptOutput(many=True, help_text="Every try, redeliveries' included, oldest first.")


class _AdminView(APIView):
    permission_classes = [TenantPermission]
    required_role = Role.ADMIN

    def endpoint(self, request: Request, endpoint_id):
        return selectors.endpoint_get(
            organisation=get_tenant(request).organisation, endpoint_id=endpoint_id
        )

    def who(self, request: Request) -> dict:
        """The audit trail's actor of a change: the user, the API key, the request's metadata."""
        return {
            "actor": request.user,
            "api_key": get_tenant(request).api_key,
            "meta": RequestMeta.from_request(request),
        }


class EndpointListCreateView(_AdminView):
    @extend_schema(
        operation_id="webhook_endpoints_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of("WebhookEndpoint", EndpointOutput), **ERRORS},
    )
    def get(self, request: Request, version: str) -> Response:
        return paginated_response(
            queryset=selectors.endpoint_list(organisation=get_tenant(request).organisation),
            serializer_class=EndpointOutput,
            request=request,
            view=self,
        )

    @extend_schema(
        operation_id="webhook_endpoints_create",
        request=EndpointInput,
        responses={201: EndpointWithSecretOutput, **CREATE_ERRORS},
    )
    def post(self, request: Request, version: str) -> Response:
        data = EndpointInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        endpoint = services.endpoint_create(
            organisation=tenant.organisation,
            user=tenant.user,
            api_key=tenant.api_key,
            meta=RequestMeta.from_request(request),
            **data.validated_data,
        )
        return Response(EndpointWithSecretOutput(endpoint).data, status=status.HTTP_201_CREATED)


class EndpointDetailView(_AdminView):
    @extend_schema(operation_id="webhook_endpoints_get", responses={200: EndpointOutput, **ERRORS})
    def get(self, request: Request, version: str, endpoint_id) -> Response:
        return Response(EndpointOutput(self.endpoint(request, endpoint_id)).data)

    @extend_schema(operation_id="webhook_endpoints_delete", responses={204: None, **ERRORS})
    def delete(self, request: Request, version: str, endpoint_id) -> Response:
        services.endpoint_delete(endpoint=self.endpoint(request, endpoint_id), **self.who(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointDisableView(_AdminView):
    @extend_schema(
        operation_id="webhook_endpoints_disable",
        request=None,
        responses={200: EndpointOutput, **ERRORS},
    )
    def post(self, request: Request, version: str, endpoint_id) -> Response:
        endpoint = services.endpoint_disable(
            endpoint=self.endpoint(request, endpoint_id),
            reason="Disabled by an administrator.",
            **self.who(request),
        )
        return Response(EndpointOutput(endpoint).data)


class EndpointEnableView(_AdminView):
    @extend_schema(
        operation_id="webhook_endpoints_enable",
        request=None,
        responses={200: EndpointOutput, **ERRORS},
    )
    def post(self, request: Request, version: str, endpoint_id) -> Response:
        endpoint = services.endpoint_enable(
            endpoint=self.endpoint(request, endpoint_id), **self.who(request)
        )
        return Response(EndpointOutput(endpoint).data)


class EndpointRotateSecretView(_AdminView):
    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        request=None,
        responses={200: EndpointWithSecretOutput, **ERRORS},
    )
    def post(self, request: Request, version: str, endpoint_id) -> Response:
        endpoint = services.endpoint_rotate_secret(
            endpoint=self.endpoint(request, endpoint_id), **self.who(request)
        )
        return Response(EndpointWithSecretOutput(endpoint).data)


class EndpointTestView(_AdminView):
    @extend_schema(
        operation_id="webhook_endpoints_test",
        request=None,
        responses={202: DeliveryOutput, **TEST_ERRORS},
    )
    def post(self, request: Request, version: str, endpoint_id) -> Response:
        delivery = services.endpoint_send_test(endpoint=self.endpoint(request, endpoint_id))
        return Response(DeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)


class DeliveryListView(_AdminView):
    @extend_schema(
        operation_id="webhook_deliveries_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of("WebhookDelivery", DeliveryOutput), **ERRORS},
    )
    def get(self, request: Request, version: str, endpoint_id) -> Response:
        deliveries = selectors.delivery_list(
            organisation=get_tenant(request).organisation, endpoint_id=endpoint_id
        )
        return paginated_response(
            queryset=deliveries, serializer_class=DeliveryOutput, request=request, view=self
        )


class DeliveryRedeliverView(_AdminView):
    @extend_schema(
        operation_id="webhook_deliveries_redeliver",
        request=None,
        responses={202: DeliveryOutput, **REDELIVER_ERRORS},
        description="Send a delivery that succeeded or failed again: the same event (its "
        "`webhook-id` and payload), signed anew, with a new series of tries on the retry "
        "schedule.",
    )
    def post(self, request: Request, version: str, endpoint_id, delivery_id) -> Response:
        delivery = services.delivery_redeliver(
            endpoint=self.endpoint(request, endpoint_id),
            delivery_id=delivery_id,
            **self.who(request),
        )
        return Response(DeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)
