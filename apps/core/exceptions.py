"""One error body for the whole API.

Every error is `{"error": {"code", "message", "details", "request_id"}}`. Services raise
`ApplicationError` (or Django's ValidationError / Http404 / PermissionDenied); views never catch.
Unknown exceptions answer 500 with the same body and go to the log and Sentry with the traceback;
the client never sees internals. A database that cannot be reached (down, restarting, no pooled
connection within DB_POOL_TIMEOUT) or a statement past its timeout answers 503 with Retry-After:
the client may try again, and the outage shows in /readyz and the DatabaseUnavailable alert.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from .context import get_request_id

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    """A failure the caller can act on: a stable code, a readable message, optional details."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    code: str = "application_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.details = details if details is not None else {}
        self.status_code = status_code or self.status_code
        self.headers = headers or {}


class NotFoundError(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class ConflictError(ApplicationError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class ServiceUnavailableError(ApplicationError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"


DATABASE_RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException | None) -> ServiceUnavailableError | None:
    """The 503 for a database failure the client can retry, or None for any other exception.

    A statement cancelled by its timeout is logged as an error with its traceback (a query too
    slow for the web tier is a bug to find); an unreachable database as one warning line per
    request (the outage itself is what /readyz and the DatabaseUnavailable alert report).
    """
    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    from psycopg import errors as pg_errors

    headers = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
    if isinstance(exc.__cause__, pg_errors.QueryCanceled):
        logger.error("Database statement cancelled (statement timeout)", exc_info=exc)
        return ServiceUnavailableError(
            "The database did not answer in time. Try again.",
            code="database_timeout",
            headers=headers,
        )
    logger.warning("Database unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
    return ServiceUnavailableError(
        "The database is unavailable. Try again shortly.",
        code="database_unavailable",
        headers=headers,
    )


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details if details is not None else {},
            "request_id": get_request_id(),
        }
    }


def _plain(detail: Any) -> Any:
    """DRF's error details as plain lists, dicts and strs (every renderer writes them alike)."""
    if isinstance(detail, dict):
        return {str(key): _plain(value) for key, value in detail.items()}
    if isinstance(detail, list | tuple):
        return [_plain(item) for item in detail]
    return str(detail) if isinstance(detail, str) else detail


def _message_of(detail: Any, default: str) -> str:
    # A plain str: DRF's ErrorDetail (a str subclass) is written as a mapping by the schema
    # view's YAML renderer.
    if isinstance(detail, str):
        return str(detail)
    if isinstance(detail, dict) and isinstance(detail.get("detail"), str):
        return str(detail["detail"])
    return default


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, RequestDataTooBig):
        exc = ApplicationError(
            "The request body is too large.", code="request_too_large", status_code=413
        )
    elif isinstance(exc, SuspiciousOperation):
        exc = ApplicationError("The request was refused as malformed.", code="bad_request")
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif (unavailable := database_unavailable(exc)) is not None:
        exc = unavailable

    if isinstance(exc, ApplicationError):
        set_rollback()
        body = error_body(exc.code, exc.message, exc.details)
        return Response(body, status=exc.status_code, headers=exc.headers)

    if isinstance(exc, exceptions.APIException):
        # DRF's handler adds WWW-Authenticate / Retry-After headers and rolls back.
        response = drf_exception_handler(exc, context)
        assert response is not None
        if isinstance(exc, exceptions.ValidationError):
            body = error_body("validation_error", "The request is invalid.", _plain(exc.detail))
        else:
            detail = exc.detail
            code = exc.default_code
            if isinstance(detail, dict) and isinstance(detail.get("code"), str):
                code = str(detail["code"])
            elif hasattr(detail, "code") and isinstance(detail.code, str):
                code = detail.code
            details: Any = {}
            if isinstance(exc, exceptions.Throttled):
                # djangorestframework-stubs omit the `wait` attribute Throttled.__init__ sets.
                wait: float | None = exc.wait  # type: ignore[attr-defined]
                if wait is not None:
                    details = {"retry_after_seconds": int(wait + 0.999)}
            body = error_body(code, _message_of(detail, str(exc.default_detail)), details)
        response.data = body
        return response

    set_rollback()
    view = context.get("view")
    logger.exception(
        "Unhandled exception in %s", type(view).__name__ if view else "view", exc_info=exc
    )
    return Response(
        error_body("internal_error", "An unexpected error occurred. It has been logged."),
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def _wants_html(request: HttpRequest) -> bool:
    return not request.path.startswith("/api/") and "text/html" in request.headers.get("Accept", "")


def json_error_view(status_code: int, code: str, message: str) -> Callable[..., HttpResponse]:
    """Build a Django `handlerNNN` that answers API clients with the error body."""
    from django.views import defaults

    html_handlers: dict[int, Callable[..., HttpResponse]] = {
        400: defaults.bad_request,
        403: defaults.permission_denied,
        404: defaults.page_not_found,
        500: defaults.server_error,
    }

    def view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        # Django calls handler500 inside its `except` block: a database failure raised outside
        # a DRF view (middleware, admin, plain views) is a 503 there too.
        if status_code == 500 and (unavailable := database_unavailable(sys.exc_info()[1])):
            response = JsonResponse(
                error_body(unavailable.code, unavailable.message), status=unavailable.status_code
            )
            for name, value in unavailable.headers.items():
                response[name] = value
            return response
        if _wants_html(request):
            handler = html_handlers[status_code]
            return handler(request) if status_code == 500 else handler(request, exception)
        return JsonResponse(error_body(code, message), status=status_code)

    return view
