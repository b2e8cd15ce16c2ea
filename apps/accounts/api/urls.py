from django.urls import path

from .views import account, auth, members

urlpatterns = [
    # Sign-in and tokens
    path("auth/token/", auth.TokenObtainApi.as_view(), name="token-obtain"),
    path("auth/token/refresh/", auth.TokenRefreshApi.as_view(), name="token-refresh"),
    path("auth/logout/", auth.LogoutApi.as_view(), name="logout"),
    path("auth/logout-all/", auth.LogoutAllApi.as_view(), name="logout-all"),
    path("auth/register/", auth.RegisterApi.as_view(), name="register"),
    path("auth/verify-email/", auth.VerifyEmailApi.as_view(), name="verify-email"),
    path(
        "auth/verify-email/resend/", auth.VerifyEmailResendApi.as_view(), name="verify-email-resend"
    ),
    path("auth/password-reset/", auth.PasswordResetApi.as_view(), name="password-reset"),
    path(
        "auth/password-reset/confirm/",
        auth.PasswordResetConfirmApi.as_view(),
        name="password-reset-confirm",
    ),
    # The caller's account
    path("me/", account.MeApi.as_view(), name="me"),
    path("me/password/", account.PasswordChangeApi.as_view(), name="password-change"),
    path("me/deactivate/", account.DeactivateApi.as_view(), name="deactivate"),
    # Organisations the caller belongs to
    path("organisations/", account.OrganisationListApi.as_view(), name="organisation-list"),
    path(
        "organisations/<uuid:organisation_id>/",
        account.OrganisationDetailApi.as_view(),
        name="organisation-detail",
    ),
    path(
        "organisations/<uuid:organisation_id>/leave/",
        account.OrganisationLeaveApi.as_view(),
        name="organisation-leave",
    ),
    # Inside the chosen organisation (X-Organisation, token claim, or the only one)
    path("members/", members.MemberListApi.as_view(), name="member-list"),
    path("members/<uuid:member_id>/", members.MemberDetailApi.as_view(), name="member-detail"),
    path("invitations/", members.InvitationListApi.as_view(), name="invitation-list"),
    path("invitations/accept/", members.InvitationAcceptApi.as_view(), name="invitation-accept"),
    path(
        "invitations/<uuid:invitation_id>/",
        members.InvitationDetailApi.as_view(),
        name="invitation-detail",
    ),
    path(
        "invitations/<uuid:invitation_id>/resend/",
        members.InvitationResendApi.as_view(),
        name="invitation-resend",
    ),
    path("api-keys/", members.ApiKeyListApi.as_view(), name="api-key-list"),
    path("api-keys/<uuid:api_key_id>/", members.ApiKeyDetailApi.as_view(), name="api-key-detail"),
]
