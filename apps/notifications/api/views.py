"""Notification preferences of the signed-in user, and one-click unsubscribe."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.tenancy import IsHumanUser
from apps.core.drf import InputSerializer, errors

from .. import services


class PreferenceSerializer(InputSerializer):
    """The preferences; as input, a misspelt or unknown field is a 400, never silently dropped
    (the user would believe a mail was turned off)."""

    job = serializers.BooleanField(required=False)
    report = serializers.BooleanField(required=False)
    weekly_usage = serializers.BooleanField(required=False)
    webhook_alerts = serializers.BooleanField(required=False)


class PreferenceView(APIView):
    permission_classes = [IsHumanUser]

    @extend_schema(
        operation_id="notification_preferences_get",
        responses={200: PreferenceSerializer, **errors(401, 403)},
    )
    def get(self, request: Request, version: str) -> Response:
        preference = services.preference_get(user=request.user)
        return Response(PreferenceSerializer(preference).data)

    @extend_schema(
        operation_id="notification_preferences_update",
        request=PreferenceSerializer,
        responses={200: PreferenceSerializer, **errors(400, 401, 403)},
    )
    def patch(self, request: Request, version: str) -> Response:
        data = PreferenceSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        preference = services.preference_update(user=request.user, changes=data.validated_data)
        return Response(PreferenceSerializer(preference).data)


class UnsubscribeView(APIView):
    """The link in non-essential mail (GET) and RFC 8058 one-click POST both unsubscribe."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        operation_id="notifications_unsubscribe",
        parameters=[OpenApiParameter("token", str, required=True)],
        responses={
            200: PreferenceSerializer,
            **errors(400, descriptions={400: "The token is missing, malformed or forged."}),
        },
    )
    def get(self, request: Request, version: str) -> Response:
        preference = services.unsubscribe(token=request.query_params.get("token", ""))
        return Response(PreferenceSerializer(preference).data)

    @extend_schema(
        operation_id="notifications_unsubscribe_post",
        parameters=[OpenApiParameter("token", str, required=True)],
        request=None,
        responses={
            200: PreferenceSerializer,
            **errors(400, descriptions={400: "The token is missing, malformed or forged."}),
        },
    )
    def post(self, request: Request, version: str) -> Response:
        return self.get(request, version)
