"""Session logins (the Django admin's and the browsable API's) behind the same brute-force
guard as the API's sign-in, and the admin's own password change behind it too.

Failed logins count against the account and the client IP (trusted proxies only); once either is
used up, the login answers 429 with Retry-After, even to the right password. The browsable API's
login (`/api-auth/login/`, DRF's own page) also refuses an account whose email address is not
verified, as the token sign-in does. A session ends when the user's `token_version` is raised
(sign out everywhere, a new password, deactivation): see `User._get_session_auth_hash`.

The admin's "Change password" page (`/admin/password_change/`) asks for the current password: a
stolen staff session must not get unlimited guesses at it. It goes through the service the API's
`/me/password/` uses (`password_change_in_session`): wrong answers count as failed sign-ins of
the account and the address, past the limit it answers 429, and a new password ends every other
session and token of the user, is recorded in the audit trail and emailed to the user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.forms import AdminPasswordChangeForm
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from rest_framework.exceptions import Throttled

from apps.core.exceptions import ServiceUnavailableError

from . import services
from .models import normalise_email
from .network import RequestMeta, client_ip
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
        except (Throttled, ServiceUnavailableError) as exc:
            return _refused(exc)

    return view


def _refused(exc: Throttled | ServiceUnavailableError) -> HttpResponse:
    """The guard's answer: 429 with Retry-After, or 503 while its counters cannot be reached."""
    if isinstance(exc, ServiceUnavailableError):
        return HttpResponse(exc.message, status=503, content_type="text/plain; charset=utf-8")
    wait = int(exc.wait or 60)
    response = HttpResponse(
        f"Too many sign-in attempts. Try again in {wait} second{'s' if wait != 1 else ''}.",
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(wait)
    return response


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


# ---- The admin's own password change ----------------------------------------------------------
class GuardedPasswordChangeForm(AdminPasswordChangeForm):
    """The admin's form, whose current password the service checks, under the guard: Django's
    `clean_old_password` would test it here, unguarded and uncounted."""

    def clean_old_password(self) -> str:
        return self.cleaned_data["old_password"]


class AdminPasswordChangeView(auth_views.PasswordChangeView):
    """`AdminSite.password_change`, with the change made by `password_change_in_session`."""

    form_class = GuardedPasswordChangeForm

    def get_success_url(self) -> str:
        return reverse("admin:password_change_done", current_app=admin.site.name)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**admin.site.each_context(self.request), **super().get_context_data(**kwargs)}

    def form_valid(self, form: GuardedPasswordChangeForm) -> HttpResponse:
        try:
            services.password_change_in_session(
                user=form.user,
                current_password=form.cleaned_data["old_password"],
                new_password=form.cleaned_data["new_password1"],
                meta=RequestMeta.from_request(self.request),
            )
        except ValidationError as exc:
            errors = exc.message_dict
            if "current_password" in errors:
                form.add_error(
                    "old_password",
                    ValidationError(
                        form.error_messages["password_incorrect"], code="password_incorrect"
                    ),
                )
            for message in errors.get("password", []):
                form.add_error("new_password2", message)
            return self.form_invalid(form)
        # Every other session of the user has ended (a new `token_version`); this one goes on.
        update_session_auth_hash(self.request, form.user)
        return HttpResponseRedirect(self.get_success_url())


_admin_password_change = AdminPasswordChangeView.as_view()


def _guarded_password_change(request: HttpRequest) -> HttpResponse:
    request.current_app = admin.site.name
    try:
        return _admin_password_change(request)
    except (Throttled, ServiceUnavailableError) as exc:
        return _refused(exc)


# Staff only, as the admin's own page (`admin_view` also adds CSRF protection and never_cache).
guarded_admin_password_change = admin.site.admin_view(_guarded_password_change)
