"""Session logins (the Django admin's and the browsable API's) behind the same brute-force
guard as the API's sign-in.

Failed logins count against the account and the client IP (trusted proxies only); once either is
used up, the login answers 429 with Retry-After, even to the right password. The browsable API's
login (`/api-auth/login/`, DRF's own page) also refuses an account whose email address is not
verified, as the token sign-in does. A session ends when the user's `token_version` is raised
(sign out everywhere, a new password, deactivation): see `User._get_session_auth_hash`.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from rest_framework.exceptions import Throttled

from apps.core.exceptions import ServiceUnavailableError

from .models import normalise_email
from .network import client_ip
from .ratelimit import guard_attempt, guard_hit


class VerifiedAuthenticationForm(AuthenticationForm):
    def confirm_login_allowed(self, user) -> None:  # type: ignore[no-untyped-def]
        super().confirm_login_allowed(user)
        if not user.email_verified:
            raise ValidationError(
                "Verify your email address before signing in.", code="email_not_verified"
            )


def _guarded(login: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    @never_cache
    @csrf_protect
    def view(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return login(request)
        account = normalise_email(request.POST.get("username", ""))
        ip = client_ip(request)
        try:
            with guard_attempt(guard="login", account=account, ip=ip):
                response = login(request)
                # A successful login redirects; a failed one renders the form again.
                if response.status_code == 200:
                    guard_hit(guard="login", account=account, ip=ip)
                return response
        except Throttled as exc:
            wait = int(exc.wait or 60)
            response = HttpResponse(
                f"Too many sign-in attempts. Try again in {wait} second{'s' if wait != 1 else ''}.",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(wait)
            return response
        except ServiceUnavailableError as exc:
            return HttpResponse(exc.message, status=503, content_type="text/plain; charset=utf-8")

    return view


guarded_admin_login = _guarded(admin.site.login)

_api_login = auth_views.LoginView.as_view(
    template_name="rest_framework/login.html",
    authentication_form=VerifiedAuthenticationForm,
    redirect_authenticated_user=False,
)


def _render_api_login(request: HttpRequest) -> HttpResponse:
    response = _api_login(request)
    # A TemplateResponse: rendered here so the guard sees the final status.
    render = getattr(response, "render", None)
    if callable(render):
        render()
    return response


guarded_api_login = _guarded(_render_api_login)
