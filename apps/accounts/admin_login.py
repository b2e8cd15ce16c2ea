"""The Django admin's login behind the same brute-force guard as the API's sign-in.

Failed admin logins count against the account and the client IP (trusted proxies only); once
either is used up, the login answers 429 with Retry-After, even to the right password.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from rest_framework.exceptions import Throttled

from apps.core.exceptions import ServiceUnavailableError

from .models import normalise_email
from .network import client_ip
from .ratelimit import guard_check, guard_hit


@never_cache
@csrf_protect
def guarded_admin_login(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return admin.site.login(request)
    account = normalise_email(request.POST.get("username", ""))
    ip = client_ip(request)
    try:
        guard_check(guard="login", account=account, ip=ip)
    except Throttled as exc:
        wait = int(exc.wait or 60)
        response = HttpResponse(
            f"Too many failed sign-ins. Try again in {wait} seconds.",
            status=429,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(wait)
        return response
    except ServiceUnavailableError as exc:
        return HttpResponse(exc.message, status=503, content_type="text/plain; charset=utf-8")
    response = admin.site.login(request)
    # A successful login redirects; a failed one renders the form again.
    if response.status_code == 200:
        guard_hit(guard="login", account=account, ip=ip)
    return response
