"""Give django-auditlog the caller that DRF authenticated, and the proxy-aware client IP.

`auditlog.middleware.AuditlogMiddleware` captures the actor before DRF authenticates a token
(so JWT and API-key calls would be logged without an actor) and takes the left-most
`X-Forwarded-For` entry as the address (client-controlled). Authentication classes call
`bind_request_actor` to correct both for the rest of the request.
"""

from __future__ import annotations

from typing import Any

from auditlog.context import auditlog_value


def bind_request_actor(request: Any, user: Any) -> None:
    from apps.accounts.network import client_ip

    try:
        data = auditlog_value.get()
    except LookupError:
        return
    if user is not None:
        data["actor"] = user
    data["remote_addr"] = client_ip(request)
