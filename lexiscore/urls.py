import functools
from collections.abc import Callable
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

from apps.accounts.session_login import guarded_admin_login, guarded_api_login
from apps.core import health
from apps.core.exceptions import json_error_view


def with_other_spelling(patterns: list[URLPattern | URLResolver]) -> list[URLPattern | URLResolver]:
    """`patterns`, then each route again under its other spelling, with or without the trailing
    slash (`/jobs` and `/jobs/`, `/reports/` and `/reports`): the routes were written both ways,
    and Django's APPEND_SLASH answers the other spelling with a 301, which a client follows as a
    GET (`POST /reports` would list the reports and create none). The twins come after every
    route, unnamed, so a request spelt as written resolves as fast as before and `reverse()`
    gives the written spelling."""
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
        twins.append(path(other, _other_spelling_of(route.callback), route.default_args))
    return [*patterns, *twins]


def _other_spelling_of(view: Callable[..., Any]) -> Callable[..., Any]:
    """`view` (its attributes too: DRF's `cls`, `csrf_exempt`), marked so that the OpenAPI
    schema lists each route once (`exclude_other_spellings`)."""

    @functools.wraps(view)
    def other_spelling(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    other_spelling.other_spelling = True  # type: ignore[attr-defined]
    return other_spelling


def exclude_other_spellings(endpoints: list[tuple[Any, ...]], **_kwargs: Any) -> list[tuple]:
    """drf-spectacular preprocessing hook: the schema documents each route as written."""
    return [e for e in endpoints if not getattr(e[3], "other_spelling", False)]


api_v1 = with_other_spelling(
    [
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
)

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
