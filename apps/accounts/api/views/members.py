"""Members, invitations and API keys of the caller's organisation."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import selectors, services
from apps.accounts.models import ApiKey, ApiKeyRole, Invitation, Membership, Role, User
from apps.accounts.network import RequestMeta
from apps.accounts.tenancy import ORGANISATION_HEADER, IsHumanUser, TenantPermission, get_tenant
from apps.core.drf import (
    PAGE_PARAMETERS,
    InputSerializer,
    NamedSerializer,
    errors,
    page_of,
    paginated_response,
)

from .auth import TokenPairOutputSerializer, password_field

ORGANISATION_PARAMETER = OpenApiParameter(
    ORGANISATION_HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="The organisation to act for (needed when the caller belongs to several).",
)


class TenantApi(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]


def _actor(request: Request) -> Membership:
    """The caller's membership (write endpoints here need a person, not an API key)."""
    tenant = get_tenant(request)
    assert tenant.membership is not None
    return tenant.membership


# ---- Members ----------------------------------------------------------------------------------
class MemberOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    user_id = serializers.UUIDField(source="user.public_id")
    email = serializers.EmailField(source="user.email")
    full_name = serializers.CharField(source="user.full_name")
    role = serializers.CharField()
    joined_at = serializers.DateTimeField(source="created_at")


class MemberListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices, required=False)

    @extend_schema(
        operation_id="members_list",
        summary="Members of the organisation",
        parameters=[
            ORGANISATION_PARAMETER,
            OpenApiParameter("role", str, enum=Role.values, required=False),
            *PAGE_PARAMETERS,
        ],
        responses={200: page_of("Member", MemberOutputSerializer), **errors(400, 401, 403, 404)},
        tags=["members"],
    )
    def get(self, request: Request, version: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated_response(
            queryset=selectors.membership_list(
                organisation_id=get_tenant(request).organisation.id, **filters.validated_data
            ),
            serializer_class=MemberOutputSerializer,
            request=request,
            view=self,
        )


class MemberDetailApi(TenantApi):
    required_roles = {"PATCH": Role.ADMIN, "DELETE": Role.ADMIN}

    class InputSerializer(InputSerializer):
        role = serializers.ChoiceField(choices=Role.choices)

    def _membership(self, request: Request, member_id) -> Membership:
        return selectors.membership_get(
            organisation_id=get_tenant(request).organisation.id, membership_id=member_id
        )

    @extend_schema(
        operation_id="members_retrieve",
        summary="One member",
        parameters=[ORGANISATION_PARAMETER],
        responses={200: MemberOutputSerializer, **errors(401, 403, 404)},
        tags=["members"],
    )
    def get(self, request: Request, version: str, member_id) -> Response:
        return Response(MemberOutputSerializer(self._membership(request, member_id)).data)

    @extend_schema(
        operation_id="members_update",
        summary="Change a member's role (admins; owner rights need an owner)",
        parameters=[ORGANISATION_PARAMETER],
        request=InputSerializer,
        responses={200: MemberOutputSerializer, **errors(400, 401, 403, 404, 409)},
        tags=["members"],
    )
    def patch(self, request: Request, version: str, member_id) -> Response:
        membership = self._membership(request, member_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.membership_change_role(
            actor=_actor(request),
            membership=membership,
            role=data.validated_data["role"],
            meta=RequestMeta.from_request(request),
        )
        return Response(MemberOutputSerializer(membership).data)

    @extend_schema(
        operation_id="members_remove",
        summary="Remove a member; every session of that user ends",
        parameters=[ORGANISATION_PARAMETER],
        request=None,
        responses={204: None, **errors(401, 403, 404, 409)},
        tags=["members"],
    )
    def delete(self, request: Request, version: str, member_id) -> Response:
        services.membership_remove(
            actor=_actor(request),
            membership=self._membership(request, member_id),
            meta=RequestMeta.from_request(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---- Invitations ------------------------------------------------------------------------------
class InvitationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()
    role = serializers.CharField()
    status = serializers.CharField()
    expired = serializers.BooleanField(source="is_expired")
    expires_at = serializers.DateTimeField()
    invited_by = serializers.UUIDField(source="invited_by.public_id", allow_null=True)
    sent_count = serializers.IntegerField()
    last_sent_at = serializers.DateTimeField(allow_null=True)
    accepted_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class AdminApi(TenantApi):
    permission_classes = [IsAuthenticated, TenantPermission, IsHumanUser]
    required_role = Role.ADMIN


class InvitationListApi(AdminApi):
    class InputSerializer(InputSerializer):
        email = serializers.EmailField(max_length=254)
        role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Invitation.Status.choices, required=False)

    @extend_schema(
        operation_id="invitations_list",
        summary="Invitations of the organisation (admins)",
        parameters=[
            ORGANISATION_PARAMETER,
            OpenApiParameter("status", str, enum=Invitation.Status.values, required=False),
            *PAGE_PARAMETERS,
        ],
        responses={
            200: page_of("Invitation", InvitationOutputSerializer),
            **errors(400, 401, 403, 404),
        },
        tags=["invitations"],
    )
    def get(self, request: Request, version: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated_response(
            queryset=selectors.invitation_list(
                organisation_id=get_tenant(request).organisation.id, **filters.validated_data
            ),
            serializer_class=InvitationOutputSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        operation_id="invitations_create",
        summary="Invite someone by email (admins; only owners invite owners)",
        parameters=[ORGANISATION_PARAMETER],
        request=InputSerializer,
        responses={
            201: InvitationOutputSerializer,
            **errors(
                400,
                401,
                403,
                404,
                409,
                descriptions={
                    429: "`invitation_address_limit` (the address received "
                    "INVITATION_RATE_PER_ADDRESS invitations, from any organisation) or the "
                    "general rate: wait `Retry-After` seconds.",
                },
            ),
        },
        tags=["invitations"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation = services.invitation_create(
            actor=_actor(request), **data.validated_data, meta=RequestMeta.from_request(request)
        )
        return Response(InvitationOutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


def _invitation(request: Request, invitation_id) -> Invitation:
    return selectors.invitation_get(
        organisation_id=get_tenant(request).organisation.id, invitation_id=invitation_id
    )


class InvitationDetailApi(AdminApi):
    @extend_schema(
        operation_id="invitations_retrieve",
        summary="One invitation (admins)",
        parameters=[ORGANISATION_PARAMETER],
        responses={200: InvitationOutputSerializer, **errors(401, 403, 404)},
        tags=["invitations"],
    )
    def get(self, request: Request, version: str, invitation_id) -> Response:
        return Response(InvitationOutputSerializer(_invitation(request, invitation_id)).data)

    @extend_schema(
        operation_id="invitations_revoke",
        summary="Revoke a pending invitation (admins)",
        parameters=[ORGANISATION_PARAMETER],
        request=None,
        responses={204: None, **errors(401, 403, 404, 409)},
        tags=["invitations"],
    )
    def delete(self, request: Request, version: str, invitation_id) -> Response:
        services.invitation_revoke(
            actor=_actor(request),
            invitation=_invitation(request, invitation_id),
            meta=RequestMeta.from_request(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationResendApi(AdminApi):
    @extend_schema(
        operation_id="invitations_resend",
        summary="Send a pending invitation again with a fresh link (admins)",
        parameters=[ORGANISATION_PARAMETER],
        request=None,
        responses={
            200: InvitationOutputSerializer,
            **errors(
                401,
                403,
                404,
                descriptions={
                    409: "`not_pending`, or `invitation_send_limit`: sent INVITATION_SENDS_MAX "
                    "times already (revoke it and invite again).",
                    429: "`invitation_resend_too_soon` (within INVITATION_RESEND_COOLDOWN_SECONDS "
                    "of the last send), `invitation_address_limit` (the address received "
                    "INVITATION_RATE_PER_ADDRESS invitations) or the general rate: wait "
                    "`Retry-After` seconds.",
                },
            ),
        },
        tags=["invitations"],
    )
    def post(self, request: Request, version: str, invitation_id) -> Response:
        invitation = services.invitation_resend(
            actor=_actor(request),
            invitation=_invitation(request, invitation_id),
            meta=RequestMeta.from_request(request),
        )
        return Response(InvitationOutputSerializer(invitation).data)


class InvitationAcceptApi(APIView):
    permission_classes = [AllowAny]

    class InputSerializer(InputSerializer):
        token = serializers.CharField(max_length=1024)
        password = password_field(required=False)
        full_name = serializers.CharField(max_length=150, required=False, default="")

    class OutputSerializer(NamedSerializer):
        organisation = serializers.UUIDField(source="membership.organisation_id")
        role = serializers.CharField(source="membership.role")
        tokens = TokenPairOutputSerializer(allow_null=True)

    @extend_schema(
        operation_id="invitations_accept",
        summary="Accept an invitation",
        description=(
            "Signed in: joins if the invitation was sent to the caller's address. Not signed "
            "in: creates the account (give `password`) and returns its first token pair; an "
            "address that already has an account answers 409 `account_exists`."
        ),
        request=InputSerializer,
        responses={200: OutputSerializer, **errors(400, 403, 409)},
        tags=["invitations"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = request.user if isinstance(request.user, User) else None
        membership, pair = services.invitation_accept(
            user=user, **data.validated_data, meta=RequestMeta.from_request(request)
        )
        tokens = {"access": pair.access, "refresh": pair.refresh} if pair else None
        return Response(self.OutputSerializer({"membership": membership, "tokens": tokens}).data)


# ---- API keys ---------------------------------------------------------------------------------
class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    role = serializers.CharField()
    created_by = serializers.UUIDField(source="created_by.public_id", allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField(source="is_usable")


class ApiKeyListApi(AdminApi):
    class InputSerializer(InputSerializer):
        name = serializers.CharField(max_length=100)
        role = serializers.ChoiceField(choices=ApiKeyRole.choices, default=ApiKeyRole.MEMBER)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    class CreatedOutputSerializer(ApiKeyOutputSerializer):
        key = serializers.CharField(help_text="The full key. Shown only in this response.")

    class FilterSerializer(serializers.Serializer):
        active = serializers.BooleanField(required=False, allow_null=True, default=None)

    @extend_schema(
        operation_id="api_keys_list",
        summary="API keys of the organisation (admins); keys themselves are never shown again",
        parameters=[
            ORGANISATION_PARAMETER,
            OpenApiParameter(
                "active",
                bool,
                required=False,
                description="true: keys that work now; false: revoked or expired keys.",
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: page_of("ApiKey", ApiKeyOutputSerializer), **errors(400, 401, 403, 404)},
        tags=["api-keys"],
    )
    def get(self, request: Request, version: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated_response(
            queryset=selectors.api_key_list(
                organisation_id=get_tenant(request).organisation.id,
                active=filters.validated_data.get("active"),
            ),
            serializer_class=ApiKeyOutputSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        operation_id="api_keys_create",
        summary="Create an API key (admins). The response holds the key, shown this once",
        description="Use it as `Authorization: Api-Key <key>` or `X-API-Key: <key>`.",
        parameters=[ORGANISATION_PARAMETER],
        request=InputSerializer,
        responses={201: CreatedOutputSerializer, **errors(400, 401, 403, 404, 409)},
        tags=["api-keys"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, raw = services.api_key_create(
            actor=_actor(request), **data.validated_data, meta=RequestMeta.from_request(request)
        )
        api_key.key = raw
        return Response(self.CreatedOutputSerializer(api_key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(AdminApi):
    def _api_key(self, request: Request, api_key_id) -> ApiKey:
        return selectors.api_key_get(
            organisation_id=get_tenant(request).organisation.id, api_key_id=api_key_id
        )

    @extend_schema(
        operation_id="api_keys_retrieve",
        summary="One API key (admins)",
        parameters=[ORGANISATION_PARAMETER],
        responses={200: ApiKeyOutputSerializer, **errors(401, 403, 404)},
        tags=["api-keys"],
    )
    def get(self, request: Request, version: str, api_key_id) -> Response:
        return Response(ApiKeyOutputSerializer(self._api_key(request, api_key_id)).data)

    @extend_schema(
        operation_id="api_keys_revoke",
        summary="Revoke an API key (admins); it stops working at once",
        parameters=[ORGANISATION_PARAMETER],
        request=None,
        responses={204: None, **errors(401, 403, 404)},
        tags=["api-keys"],
    )
    def delete(self, request: Request, version: str, api_key_id) -> Response:
        services.api_key_revoke(
            actor=_actor(request),
            api_key=self._api_key(request, api_key_id),
            meta=RequestMeta.from_request(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
