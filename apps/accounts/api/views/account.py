"""The caller's own account: profile, password, deactivation; their organisations."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import selectors, services
from apps.accounts.models import RETENTION_MAX_DAYS
from apps.accounts.network import RequestMeta
from apps.accounts.tenancy import ORGANISATION_HEADER, IsHumanUser
from apps.audio_jobs import redaction
from apps.core.drf import (
    ChoiceSetField,
    CompiledOutput,
    InputSerializer,
    NamedSerializer,
    errors,
    page_of,
    paginated_response,
)
from workers.engines.base import MAX_HOTWORDS_CHARS, merge_hotwords

from .auth import TokenPairOutputSerializer, password_field, token_pair_response


class UserApi(APIView):
    permission_classes = [IsAuthenticated, IsHumanUser]


class MembershipOrganisationOutput(CompiledOutput, serializers.Serializer):
    """An organisation as one of its members sees it."""

    id = serializers.UUIDField(source="organisation.id")
    name = serializers.CharField(source="organisation.name")
    plan = serializers.CharField(source="organisation.plan")
    is_active = serializers.BooleanField(source="organisation.is_active")
    redact_pii = serializers.ListField(
        source="organisation.redact_pii",
        child=serializers.CharField(),
        help_text="Entity types redacted from every job's transcript.",
    )
    redact_pii_audio = serializers.BooleanField(
        source="organisation.redact_pii_audio",
        help_text="Every job's stored audio gets the redacted spans silenced.",
    )
    audio_retention_days = serializers.IntegerField(
        source="organisation.audio_retention_days",
        allow_null=True,
        help_text="The organisation's audio retention in days (null: the platform's).",
    )
    share_links_enabled = serializers.BooleanField(source="organisation.share_links_enabled")
    hotwords = serializers.CharField(
        source="organisation.hotwords",
        help_text="Names and terms every job gives the model, after its own.",
    )
    job_retention_days = serializers.IntegerField(
        source="organisation.job_retention_days",
        allow_null=True,
        help_text="Jobs are deleted this many days after they end (null: kept).",
    )
    role = serializers.CharField()
    joined_at = serializers.DateTimeField(source="created_at")


class MeApi(UserApi):
    class OutputSerializer(CompiledOutput, NamedSerializer):
        id = serializers.UUIDField(source="public_id")
        email = serializers.EmailField()
        full_name = serializers.CharField()
        email_verified = serializers.BooleanField()
        date_joined = serializers.DateTimeField()
        organisations = MembershipOrganisationOutput(many=True)

    class InputSerializer(InputSerializer):
        full_name = serializers.CharField(max_length=150, allow_blank=True)

    def _output(self, request: Request) -> Response:
        user = request.user
        # JWT authentication already loaded them (apps.accounts.principals), in this order.
        loaded = getattr(user, "principal_memberships", None)
        user.organisations = (
            list(loaded) if loaded is not None else list(selectors.user_memberships(user=user))
        )
        return Response(self.OutputSerializer(user).data)

    @extend_schema(
        operation_id="me_retrieve",
        summary="The caller's profile and organisations (with their role in each)",
        responses={200: OutputSerializer, **errors(401, 403)},
        tags=["account"],
    )
    def get(self, request: Request, version: str) -> Response:
        return self._output(request)

    @extend_schema(
        operation_id="me_update",
        summary="Update the caller's profile (only `full_name` can change)",
        request=InputSerializer,
        responses={200: OutputSerializer, **errors(400, 401, 403)},
        tags=["account"],
    )
    def patch(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.user_update_profile(
            user=request.user, **data.validated_data, meta=RequestMeta.from_request(request)
        )
        return self._output(request)


class PasswordChangeApi(UserApi):
    class InputSerializer(InputSerializer):
        current_password = password_field()
        new_password = password_field()

    @extend_schema(
        operation_id="me_password_change",
        summary="Change the password; every other session ends, a new pair is returned",
        request=InputSerializer,
        responses={200: TokenPairOutputSerializer, **errors(400, 401, 403)},
        tags=["account"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token = request.auth
        pair = services.password_change(
            user=request.user,
            current_password=data.validated_data["current_password"],
            new_password=data.validated_data["new_password"],
            organisation_id=token.get("org") if hasattr(token, "get") else None,
            meta=RequestMeta.from_request(request),
        )
        return token_pair_response(pair)


class DeactivateApi(UserApi):
    class InputSerializer(InputSerializer):
        password = password_field()

    @extend_schema(
        operation_id="me_deactivate",
        summary="Deactivate the caller's account (confirmed with the password)",
        description="Refused with 409 `sole_owner` while the caller alone owns an organisation "
        "that has other members.",
        request=InputSerializer,
        responses={204: None, **errors(400, 401, 403, 409)},
        tags=["account"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_deactivate(
            user=request.user,
            actor=request.user,
            password=data.validated_data["password"],
            meta=RequestMeta.from_request(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class OrganisationListApi(UserApi):
    class InputSerializer(InputSerializer):
        name = serializers.CharField(max_length=150)

    @extend_schema(
        operation_id="organisations_list",
        summary="The organisations the caller belongs to",
        description=f"Choose one for other endpoints with the `{ORGANISATION_HEADER}` header.",
        responses={
            200: page_of("MembershipOrganisation", MembershipOrganisationOutput),
            **errors(401, 403),
        },
        parameters=[
            OpenApiParameter("page", int, required=False),
            OpenApiParameter("page_size", int, required=False),
        ],
        tags=["organisations"],
    )
    def get(self, request: Request, version: str) -> Response:
        # JWT authentication loaded them, in the selector's order (apps.accounts.principals).
        loaded = getattr(request.user, "principal_memberships", None)
        return paginated_response(
            queryset=list(loaded)
            if loaded is not None
            else selectors.user_memberships(user=request.user),
            serializer_class=MembershipOrganisationOutput,
            request=request,
            view=self,
        )

    @extend_schema(
        operation_id="organisations_create",
        summary="Create an organisation; the caller becomes its owner",
        request=InputSerializer,
        responses={201: MembershipOrganisationOutput, **errors(400, 401, 403, 409)},
        tags=["organisations"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organisation = services.organisation_create(
            user=request.user,
            name=data.validated_data["name"],
            meta=RequestMeta.from_request(request),
        )
        membership = selectors.membership_of_user(
            user=request.user, organisation_id=organisation.id
        )
        return Response(
            MembershipOrganisationOutput(membership).data, status=status.HTTP_201_CREATED
        )


class OrganisationDetailApi(UserApi):
    class InputSerializer(InputSerializer):
        name = serializers.CharField(max_length=150)
        redact_pii = ChoiceSetField(
            choices=redaction.ENTITY_TYPES,
            max_length=len(redaction.ENTITY_TYPES) * 2,
            help_text="Entity types redacted from every job's transcript, whatever its "
            "request asks (a request may add more). [] turns it off.",
        )
        redact_pii_audio = serializers.BooleanField(
            help_text="Also silence the redacted spans in every job's stored audio (needs "
            "`redact_pii`)."
        )
        audio_retention_days = serializers.IntegerField(
            allow_null=True,
            min_value=1,
            max_value=RETENTION_MAX_DAYS,
            help_text="Delete jobs' audio this many days after they end; at most the "
            "platform's retention (longer keeps the platform's). null: the platform's.",
        )
        share_links_enabled = serializers.BooleanField(
            help_text="Members may share transcripts by link (off: no new links, and existing "
            "ones stop working until it is on again)."
        )
        hotwords = serializers.CharField(
            allow_blank=True,
            max_length=MAX_HOTWORDS_CHARS,
            help_text="Names and terms of the organisation, comma-separated, that every job "
            'created from then on gives the model (after the job\'s own `hotwords`). "" turns '
            "it off.",
        )

        def validate_hotwords(self, value: str) -> str:
            return merge_hotwords(value)

        job_retention_days = serializers.IntegerField(
            allow_null=True,
            min_value=1,
            max_value=RETENTION_MAX_DAYS,
            help_text="Delete whole jobs (transcript, revisions, reports, audio) this many days "
            "after they end, except jobs under legal hold. null: keep them.",
        )

    @extend_schema(
        operation_id="organisations_retrieve",
        summary="One of the caller's organisations",
        responses={200: MembershipOrganisationOutput, **errors(401, 403, 404)},
        tags=["organisations"],
    )
    def get(self, request: Request, version: str, organisation_id) -> Response:
        membership = selectors.membership_of_user(
            user=request.user, organisation_id=organisation_id
        )
        return Response(MembershipOrganisationOutput(membership).data)

    @extend_schema(
        operation_id="organisations_update",
        summary="Change an organisation's name, PII redaction or retention (admins and owners)",
        description="The plan is changed by operators, not through the API. `redact_pii` and "
        "`redact_pii_audio` apply to every job created from then on; `audio_retention_days` and "
        "`job_retention_days` to every job at the next hourly retention run.",
        request=InputSerializer,
        responses={200: MembershipOrganisationOutput, **errors(400, 401, 403, 404)},
        tags=["organisations"],
    )
    def patch(self, request: Request, version: str, organisation_id) -> Response:
        membership = selectors.membership_of_user(
            user=request.user, organisation_id=organisation_id
        )
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.organisation_update(
            membership=membership, **data.validated_data, meta=RequestMeta.from_request(request)
        )
        return Response(MembershipOrganisationOutput(membership).data)


class OrganisationLeaveApi(UserApi):
    @extend_schema(
        operation_id="organisations_leave",
        summary="Leave an organisation (its last owner cannot)",
        request=None,
        responses={204: None, **errors(401, 403, 404, 409)},
        tags=["organisations"],
    )
    def post(self, request: Request, version: str, organisation_id) -> Response:
        membership = selectors.membership_of_user(
            user=request.user, organisation_id=organisation_id
        )
        services.membership_leave(membership=membership, meta=RequestMeta.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
