from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from apps.accounts.admin_login import guarded_admin_login
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

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path(f"{settings.ADMIN_URL}login/", guarded_admin_login, name="admin-login"),
    path(settings.ADMIN_URL, admin.site.urls),
    path("api/<version>/", include((api_v1, "api"), namespace="v1")),
    path("api-auth/", include("rest_framework.urls", namespace="rest_framework")),
]

handler400 = json_error_view(400, "bad_request", "The request could not be understood.")
handler403 = json_error_view(403, "permission_denied", "You may not do this.")
handler404 = json_error_view(404, "not_found", "Nothing was found at this address.")
handler500 = json_error_view(
    500, "internal_error", "An unexpected error occurred. It has been logged."
)
