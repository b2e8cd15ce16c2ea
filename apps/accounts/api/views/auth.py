"""Sign-in, token refresh, sign-out, registration, email verification and password reset."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import services
from apps.accounts.network import RequestMeta
from apps.accounts.tenancy import IsHumanUser
from apps.core.drf import DetailOutputSerializer, InputSerializer, errors

PASSWORD_MAX = 1024


def password_field(**kwargs) -> serializers.CharField:
    return serializers.CharField(
        max_length=PASSWORD_MAX, trim_whitespace=False, style={"input_type": "password"}, **kwargs
    )


class TokenPairOutputSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()


def token_pair_response(pair: services.TokenPair, status_code: int = 200) -> Response:
    return Response({"access": pair.access, "refresh": pair.refresh}, status=status_code)


class PublicApi(APIView):
    """An endpoint for anonymous callers: no credentials are read, so a stale one cannot 401."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get_authenticate_header(self, request: Request) -> str:
        # Refused credentials are a 401 (DRF would say 403 for a view without authenticators).
        return 'Bearer realm="api"'


class TokenObtainApi(PublicApi):
    class InputSerializer(InputSerializer):
        email = serializers.CharField(max_length=254)
        password = password_field()
        organisation = serializers.UUIDField(required=False)

    @extend_schema(
        operation_id="auth_token_obtain",
        summary="Sign in: exchange email and password for a token pair",
        description=(
            "Access tokens are short-lived; refresh tokens rotate on every use. `organisation` "
            "puts that organisation in the token (otherwise send `X-Organisation`, or rely on "
            "the only one). Failed attempts are limited per account and per client IP."
        ),
        request=InputSerializer,
        responses={200: TokenPairOutputSerializer, **errors(400, 401, 403)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pair = services.auth_login(
            email=data.validated_data["email"],
            password=data.validated_data["password"],
            organisation_id=data.validated_data.get("organisation"),
            meta=RequestMeta.from_request(request),
        )
        return token_pair_response(pair)


class TokenRefreshApi(PublicApi):
    class InputSerializer(InputSerializer):
        refresh = serializers.CharField(max_length=4096)

    @extend_schema(
        operation_id="auth_token_refresh",
        summary="Rotate a refresh token for a new pair",
        description=(
            "The presented refresh token is blacklisted. Presenting it again fails and is "
            "recorded as refresh-token reuse (which can end every session of the user)."
        ),
        request=InputSerializer,
        responses={200: TokenPairOutputSerializer, **errors(400, 401)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pair = services.auth_refresh(
            refresh=data.validated_data["refresh"], meta=RequestMeta.from_request(request)
        )
        return token_pair_response(pair)


class LogoutApi(PublicApi):
    class InputSerializer(InputSerializer):
        refresh = serializers.CharField(max_length=4096)

    @extend_schema(
        operation_id="auth_logout",
        summary="Sign out: blacklist a refresh token",
        request=InputSerializer,
        responses={204: None, **errors(400, 401)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.auth_logout(
            refresh=data.validated_data["refresh"], meta=RequestMeta.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogoutAllApi(APIView):
    permission_classes = [IsAuthenticated, IsHumanUser]

    @extend_schema(
        operation_id="auth_logout_all",
        summary="Sign out everywhere: revoke every access and refresh token of the caller",
        request=None,
        responses={204: None, **errors(401, 403)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        services.auth_logout_all(user=request.user, meta=RequestMeta.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RegisterApi(PublicApi):
    class InputSerializer(InputSerializer):
        email = serializers.EmailField(max_length=254)
        password = password_field()
        full_name = serializers.CharField(max_length=150, required=False, default="")
        organisation_name = serializers.CharField(max_length=150)

    @extend_schema(
        operation_id="auth_register",
        summary="Create an account and its organisation; a verification link is emailed",
        description=(
            "Answers 202 whether or not the address already has an account (that address is "
            "emailed instead), so the endpoint does not reveal who is registered."
        ),
        request=InputSerializer,
        responses={202: DetailOutputSerializer, **errors(400)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_register(**data.validated_data, meta=RequestMeta.from_request(request))
        return Response(
            {"detail": "Check your inbox for a link to confirm your address."},
            status=status.HTTP_202_ACCEPTED,
        )


class VerifyEmailApi(PublicApi):
    class InputSerializer(InputSerializer):
        token = serializers.CharField(max_length=1024)

    @extend_schema(
        operation_id="auth_verify_email",
        summary="Confirm an email address with the emailed token",
        request=InputSerializer,
        responses={200: DetailOutputSerializer, **errors(400)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_verify_email(
            token=data.validated_data["token"], meta=RequestMeta.from_request(request)
        )
        return Response({"detail": "Your email address is confirmed."})


class EmailRequestInput(InputSerializer):
    email = serializers.EmailField(max_length=254)


class VerifyEmailResendApi(PublicApi):
    @extend_schema(
        operation_id="auth_verify_email_resend",
        summary="Email a new verification link (same answer whether or not the address exists)",
        request=EmailRequestInput,
        responses={202: DetailOutputSerializer, **errors(400)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = EmailRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.email_verification_resend(
            email=data.validated_data["email"], meta=RequestMeta.from_request(request)
        )
        return Response(
            {"detail": "If that address needs confirming, a new link is on its way."},
            status=status.HTTP_202_ACCEPTED,
        )


class PasswordResetApi(PublicApi):
    @extend_schema(
        operation_id="auth_password_reset",
        summary="Email a password-reset link (same answer whether or not the address exists)",
        description=(
            "Limited per client IP (429). Past the limit per address the answer is the same "
            "and no email is sent: nobody can tell, or use up, the limit of someone's address "
            "by registering it or asking for its verification link (each counts on its own)."
        ),
        request=EmailRequestInput,
        responses={202: DetailOutputSerializer, **errors(400)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = EmailRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.password_reset_request(
            email=data.validated_data["email"], meta=RequestMeta.from_request(request)
        )
        return Response(
            {"detail": "If that address has an account, a reset link is on its way."},
            status=status.HTTP_202_ACCEPTED,
        )


class PasswordResetConfirmApi(PublicApi):
    class InputSerializer(InputSerializer):
        token = serializers.CharField(max_length=1024)
        new_password = password_field()

    @extend_schema(
        operation_id="auth_password_reset_confirm",
        summary="Set a new password with the emailed token; every session of the user ends",
        request=InputSerializer,
        responses={200: DetailOutputSerializer, **errors(400)},
        tags=["auth"],
    )
    def post(self, request: Request, version: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.password_reset_confirm(
            token=data.validated_data["token"],
            new_password=data.validated_data["new_password"],
            meta=RequestMeta.from_request(request),
        )
        return Response({"detail": "Your password has been changed. Sign in with it."})
