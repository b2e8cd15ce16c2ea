from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import URLPattern, URLResolver, include, path
from django.urls.resolvers import RoutePattern
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from apps.accounts.session_login import (
    guarded_admin_login,
    guarded_admin_password_change,
    guarded_api_login,
)
from apps.core import health
from apps.core.exceptions import json_error_view

API_PREFIX = "api/<version>/"
# A route's other spelling is named after it with this mark: `reverse()` of the written name gives
# the written spelling, and metrics count both spellings under the written name.
OTHER_SPELLING_MARK = "~"
# The API routes (as under API_PREFIX) that are another route's other spelling.
OTHER_SPELLINGS: set[str] = set()


def with_other_spelling(patterns: list[URLPattern | URLResolver]) -> list[URLPattern | URLResolver]:
    """`patterns`, then each route again under its other spelling, with or without the trailing
    slash (`/jobs` and `/jobs/`, `/reports/` and `/reports`): the routes were written both ways,
    and Django's APPEND_SLASH answers the other spelling with a 301, which a client follows as a
    GET (`POST /reports` would list the reports and create none). The twins come after every
    route and call the same view, so a request spelt as written resolves as fast as before, and
    the browsable API sees one view per path."""
    routes: list[URLPattern] = []

    def collect(entries: list[URLPattern | URLResolver]) -> None:
        for entry in entries:
            if isinstance(entry, URLResolver) and str(entry.pattern) == "":
                collect(entry.url_patterns)
            elif isinstance(entry, URLPattern) and isinstance(entry.pattern, RoutePattern):
                routes.append(entry)

    collect(patterns)
    twins = []
    for route in routes:
        written = str(route.pattern)
        other = written.removesuffix("/") if written.endswith("/") else f"{written}/"
        name = f"{route.name}{OTHER_SPELLING_MARK}" if route.name else None
        twins.append(path(other, route.callback, route.default_args, name=name))
        OTHER_SPELLINGS.add(other)
    return [*patterns, *twins]


def exclude_other_spellings(endpoints: list[tuple[Any, ...]], **_kwargs: Any) -> list[tuple]:
    """drf-spectacular preprocessing hook: the schema documents each route as written."""
    return [e for e in endpoints if e[1].removeprefix(API_PREFIX) not in OTHER_SPELLINGS]


api_v1 = with_other_spelling(
    [
        # The busiest routes first: Django tries the patterns in order on every request.
        path("", include("apps.audio_jobs.api.urls")),
        path("", include("apps.reports.api.urls")),
        path("", include("apps.accounts.api.urls")),
        path("", include("apps.audit.api.urls")),
        path("", include("apps.webhooks.api.urls")),
        path("", include("apps.feed.api.urls")),
        path("", include("apps.notifications.api.urls")),
        path("schema/", SpectacularAPIView.as_view(), name="schema"),
        path("docs/", SpectacularSwaggerSplitView.as_view(url_name="v1:schema"), name="swagger-ui"),
        path("redoc/", SpectacularRedocView.as_view(url_name="v1:schema"), name="redoc"),
    ]
)

browsable_api_auth = [
    path("login/", guarded_api_login, name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path(f"{settings.ADMIN_URL}login/", guarded_admin_login, name="admin-login"),
    # Before the admin's own route: the current password is checked under the sign-in guard.
    path(
        f"{settings.ADMIN_URL}password_change/",
        guarded_admin_password_change,
        name="admin-password-change",
    ),
    path(settings.ADMIN_URL, admin.site.urls),
    path(API_PREFIX, include((api_v1, "api"), namespace="v1")),
    # OpenAI's audio API for OpenAI SDKs (`base_url=https://<host>/api/openai/v1`).
    path("api/openai/v1/", include(("apps.openai_compat.api.urls", "openai"), namespace="openai")),
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
