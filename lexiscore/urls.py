from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from apps.accounts.session_login import guarded_admin_login, guarded_api_login
from apps.core import health
from apps.core.exceptions import json_error_view

api_v1 = [
    # The busiest routes first: Django tries the patterns in order on every request.
    path("", include("apps.audio_jobs.api.urls")),
    path("", include("apps.reports.api.urls")),
    path("", include("apps.accounts.api.urls")),
    path("", include("apps.audit.api.urls")),
    path("", include("apps.webhooks.api.urls")),
    path("", include("apps.notifications.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="v1:schema"), name="swagger-ui"),
    path("redoc/", SpectacularRedocView.as_view(url_name="v1:schema"), name="redoc"),
]

browsable_api_auth = [
    path("login/", guarded_api_login, name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path(f"{settings.ADMIN_URL}login/", guarded_admin_login, name="admin-login"),
    path(settings.ADMIN_URL, admin.site.urls),
    path("api/<version>/", include((api_v1, "api"), namespace="v1")),
    # The browsable API's login and logout, under the names its templates use; the login is
    # guarded like the token sign-in (not DRF's unguarded `rest_framework.urls`).
    path("api-auth/", include((browsable_api_auth, "rest_framework"), namespace="rest_framework")),
]

handler400 = json_error_view(400, "bad_request", "The request could not be understood.")
handler403 = json_error_view(403, "permission_denied", "You may not do this.")
handler404 = json_error_view(404, "not_found", "Nothing was found at this address.")
handler500 = json_error_view(
    500, "internal_error", "An unexpected error occurred. It has been logged."
)
