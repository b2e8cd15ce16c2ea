"""Request id: accept a well-formed `X-Request-ID`, or create one; return it on every response.
API paths: served with or without their trailing slash."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, get_urlconf, resolve

from .context import clean_request_id, request_id_var

REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = clean_request_id(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request_id
        return response


class ApiSlashMiddleware:
    """Serve an API path with or without its trailing slash.

    The API's routes end with a slash (`/reports/`) or not (`/jobs`), as they were written.
    Django's APPEND_SLASH answers the other spelling with a 301, which an HTTP client follows
    as a GET: `POST /api/v1/reports` would list the reports and create none. Here a path under
    `/api/` that matches no route, but matches one with the slash added or removed, is routed
    there (same method, same body), so both spellings work and nothing is redirected.
    """

    PREFIX = "/api/"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if path.startswith(self.PREFIX) and not _resolves(path):
            other = path[:-1] if path.endswith("/") else path + "/"
            if _resolves(other):
                request.path_info = other
                request.path = request.path[: len(request.path) - len(path)] + other
        return self.get_response(request)


def _resolves(path: str) -> bool:
    try:
        resolve(path, get_urlconf())
    except Resolver404:
        return False
    return True
