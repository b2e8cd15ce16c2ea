"""Errors of the OpenAI-compatible routes, in OpenAI's shape.

OpenAI SDKs read `{"error": {"message", "type", "param", "code"}}`. The project's one handler
(`apps.core.exceptions.exception_handler`) still decides every status, header and code (auth,
throttling, validation, 413, database outages, unknown exceptions); this handler only reshapes
its body, keeping `request_id` (and `details`) beside OpenAI's fields. Views of this app set it
with `get_exception_handler`, so the native API's body is unchanged everywhere else.
"""

from __future__ import annotations

from typing import Any

from rest_framework.response import Response

from apps.core.exceptions import ApplicationError
from apps.core.exceptions import exception_handler as core_exception_handler

JOB_ID_HEADER = "X-LexisCore-Job-Id"
# OpenAI SDKs retry 408, 409, 429 and 5xx unless told not to; each retry here would transcribe
# (and count against the quota) again.
NO_RETRY_HEADER = "x-should-retry"
QUOTA_CODE = "quota_exceeded"


class TranscriptionBusy(ApplicationError):
    """This process already has OPENAI_COMPAT_MAX_WAITING requests waiting."""

    status_code = 503
    code = "transcription_busy"


class TranscriptionTimeout(ApplicationError):
    """The job did not finish within OPENAI_COMPAT_WAIT_SECONDS (it goes on)."""

    status_code = 504
    code = "transcription_timeout"


class TranscriptionFailed(ApplicationError):
    code = "transcription_failed"


def _error_type(status_code: int, code: str) -> str:
    if code == QUOTA_CODE:
        return "insufficient_quota"  # OpenAI's type for an exhausted quota
    if status_code == 401:
        return "authentication_error"
    if status_code == 403:
        return "permission_error"
    if status_code == 429:
        return "rate_limit_error"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"


def _first_message(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        return _first_message(value[0])
    if isinstance(value, dict) and value:
        return _first_message(next(iter(value.values())))
    return None


def openai_error(error: dict[str, Any], status_code: int) -> dict[str, Any]:
    """The project's error (`error_body()["error"]`) as OpenAI's error object."""
    code = str(error.get("code") or "error")
    message = str(error.get("message") or "")
    details = error.get("details") or {}
    param = None
    if code == "validation_error" and isinstance(details, dict) and details:
        # The first field named, as OpenAI names one parameter per error.
        name = next(iter(details))
        field_message = _first_message(details[name])
        if name != "non_field_errors":
            param = name
            message = f"{name}: {field_message}" if field_message else message
        elif field_message:
            message = field_message
    elif isinstance(details, dict) and isinstance(details.get("param"), str):
        param = details["param"]
    return {
        "error": {
            "message": message,
            "type": _error_type(status_code, code),
            "param": param,
            "code": code,
            "request_id": error.get("request_id"),
            "details": details,
        }
    }


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    response = core_exception_handler(exc, context)
    error = response.data.get("error", {}) if isinstance(response.data, dict) else {}
    if error.get("code") == QUOTA_CODE:
        # OpenAI answers an exhausted quota 429 (`insufficient_quota`); the native API, 402.
        response.status_code = 429
        response[NO_RETRY_HEADER] = "false"
    job_id = getattr(exc, "lexiscore_job_id", None)
    if job_id is not None:  # the request's job exists (services.transcription_create_and_wait)
        response[JOB_ID_HEADER] = str(job_id)
        response[NO_RETRY_HEADER] = "false"
        details = error.get("details")
        error["details"] = {**(details if isinstance(details, dict) else {}), "job_id": str(job_id)}
    response.data = openai_error(error, response.status_code)
    return response


def not_found(request: Any, *args: Any, **kwargs: Any) -> Any:
    """Any other address under the OpenAI-compatible prefix: 404 in OpenAI's shape (SDKs parse
    it), not the project's 404 page."""
    from django.http import JsonResponse

    from apps.core.exceptions import error_body

    error = error_body("not_found", "Nothing was found at this address.")["error"]
    return JsonResponse(openai_error(error, 404), status=404)
