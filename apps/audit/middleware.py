"""django-auditlog's middleware with the proxy-aware client IP.

The stock middleware records the left-most `X-Forwarded-For` entry, which any client can write.
Use this class in MIDDLEWARE in place of `auditlog.middleware.AuditlogMiddleware`.
"""

from __future__ import annotations

from auditlog.middleware import AuditlogMiddleware as BaseAuditlogMiddleware
from django.http import HttpRequest


class AuditlogMiddleware(BaseAuditlogMiddleware):
    @staticmethod
    def _get_remote_addr(request: HttpRequest) -> str | None:
        from apps.accounts.network import client_ip

        return client_ip(request)
