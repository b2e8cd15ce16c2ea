"""Sentry: on only when SENTRY_DSN is set; no personal data, tagged with request and job ids."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from .context import job_id_var, request_id_var
from .logging import redact

_SCRUBBED_KEYS = ("authorization", "cookie", "password", "token", "secret", "key", "signature")


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "[Filtered]" if any(s in str(k).lower() for s in _SCRUBBED_KEYS) else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    tags = event.setdefault("tags", {})
    if request_id := request_id_var.get():
        tags["request_id"] = request_id
    if job_id := job_id_var.get():
        tags["job_id"] = job_id
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)  # request bodies may hold transcripts or credentials
        request["headers"] = _scrub(request.get("headers", {}))
        request.pop("cookies", None)
        for key in ("url", "query_string"):  # a share link's token is in its path
            if isinstance(request.get(key), str):
                request[key] = redact(request[key])
    if "extra" in event:
        event["extra"] = _scrub(event["extra"])
    # Breadcrumbs (log lines, outgoing requests) may name a URL or a token too.
    breadcrumbs = event.get("breadcrumbs")
    crumbs = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    for crumb in crumbs if isinstance(crumbs, list) else []:
        if isinstance(crumb, dict):
            if isinstance(crumb.get("message"), str):
                crumb["message"] = redact(crumb["message"])
            if isinstance(crumb.get("data"), dict):
                crumb["data"] = {
                    k: redact(v) if isinstance(v, str) else v for k, v in crumb["data"].items()
                }
    # Local variables of the frames hold what no key name betrays (a webhook's signing secrets,
    # a transcript): never sent, even if an integration or a future default turns them on.
    for holder in (
        (event.get("exception") or {}).get("values") or [],
        (event.get("threads") or {}).get("values") or [],
    ):
        for value in holder:
            for frame in (value.get("stacktrace") or {}).get("frames") or []:
                frame.pop("vars", None)
    return event


def init_sentry() -> bool:
    if not settings.SENTRY_DSN:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        environment=settings.SENTRY_ENVIRONMENT,
        release=settings.SENTRY_RELEASE or None,
        traces_sample_rate=settings.SENTRY_TRACES_SAMPLE_RATE,
        send_default_pii=False,
        include_local_variables=False,  # frames' locals can hold secrets and transcripts
        integrations=[DjangoIntegration(), CeleryIntegration(monitor_beat_tasks=True)],
        before_send=before_send,
        # Performance transactions carry the request too (a share link's token in its URL).
        before_send_transaction=before_send,
    )
    return True
