"""The error body, the request id, and security headers on API, admin and docs pages."""

import logging

import pytest
from django.test import override_settings
from django.urls import path
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import Throttled
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from apps.core.exceptions import ApplicationError
from lexiscore import urls as lexiscore_urls


@api_view(["GET"])
@permission_classes([AllowAny])
def boom(request, version):
    raise RuntimeError("secret internal detail: password=hunter2")


@api_view(["GET"])
@permission_classes([AllowAny])
def refuse(request, version):
    raise ApplicationError(
        "Quota exceeded for this period.",
        code="quota_exceeded",
        details={"limit_minutes": 600},
        status_code=402,
    )


@api_view(["GET"])
@permission_classes([AllowAny])
def throttled(request, version):
    raise Throttled(wait=12.2)


@api_view(["POST"])
@permission_classes([AllowAny])
def echo(request, version):
    from rest_framework import serializers

    class Input(serializers.Serializer):
        name = serializers.CharField(max_length=5)

    data = Input(data=request.data)
    data.is_valid(raise_exception=True)
    return Response(data.validated_data)


@api_view(["GET"])
def private(request, version):
    return Response({"ok": True})


@api_view(["GET"])
@permission_classes([AllowAny])
def slow_query(request, version):
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 50")
        cursor.execute("SELECT pg_sleep(2)")
    return Response({"ok": True})


def slow_plain_view(request):
    """A plain Django view (no DRF): its database errors reach handler500."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 50")
        cursor.execute("SELECT pg_sleep(2)")


urlpatterns = [
    path("api/<version>/private", private),
    path("api/<version>/boom", boom),
    path("api/<version>/refuse", refuse),
    path("api/<version>/throttled", throttled),
    path("api/<version>/echo", echo),
    path("api/<version>/slow-query", slow_query),
    path("plain/slow-query", slow_plain_view),
]
handler500 = lexiscore_urls.handler500


def assert_error_body(response, status, code):
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response["X-Request-ID"]
    return body["error"]


@override_settings(ROOT_URLCONF=__name__)
def test_unknown_exception_gives_500_body_without_internals(client, caplog):
    client.raise_request_exception = False

    with caplog.at_level(logging.ERROR):
        response = client.get("/api/v1/boom")

    error = assert_error_body(response, 500, "internal_error")
    assert "hunter2" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert error["message"] == "An unexpected error occurred. It has been logged."
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])
    assert logged[0].request_id == error["request_id"]


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__)
def test_a_statement_timeout_is_a_503_to_retry_and_an_error_in_the_log(client, caplog):
    with caplog.at_level(logging.WARNING):
        response = client.get("/api/v1/slow-query")

    error = assert_error_body(response, 503, "database_timeout")
    assert response["Retry-After"] == "5"
    assert "pg_sleep" not in response.content.decode()
    [record] = [r for r in caplog.records if r.name == "apps.core.exceptions"]
    assert record.levelname == "ERROR" and record.exc_info
    assert record.request_id == error["request_id"]


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__, DEBUG=False)
def test_a_database_error_outside_drf_is_a_503_too(client):
    client.raise_request_exception = False

    response = client.get("/plain/slow-query", HTTP_ACCEPT="application/json")

    assert_error_body(response, 503, "database_timeout")
    assert response["Retry-After"] == "5"


def test_only_database_failures_become_503():
    from django.db import IntegrityError, OperationalError

    from apps.core.exceptions import database_unavailable

    assert database_unavailable(RuntimeError("x")) is None
    assert database_unavailable(IntegrityError("duplicate")) is None
    assert database_unavailable(None) is None
    unavailable = database_unavailable(OperationalError("connection refused"))
    assert unavailable is not None
    assert (unavailable.status_code, unavailable.code) == (503, "database_unavailable")


@override_settings(ROOT_URLCONF=__name__)
def test_application_error_keeps_its_code_status_and_details(client):
    response = client.get("/api/v1/refuse")

    error = assert_error_body(response, 402, "quota_exceeded")
    assert error["message"] == "Quota exceeded for this period."
    assert error["details"] == {"limit_minutes": 600}


@override_settings(ROOT_URLCONF=__name__)
def test_throttled_gives_429_with_retry_after(client):
    response = client.get("/api/v1/throttled")

    error = assert_error_body(response, 429, "throttled")
    assert response["Retry-After"] == "13"
    assert error["details"] == {"retry_after_seconds": 13}


@override_settings(ROOT_URLCONF=__name__)
def test_validation_errors_list_each_field(client):
    response = client.post(
        "/api/v1/echo", {"name": "far too long"}, content_type="application/json"
    )

    error = assert_error_body(response, 400, "validation_error")
    assert error["details"]["name"] == ["Ensure this field has no more than 5 characters."]


@override_settings(ROOT_URLCONF=__name__)
def test_malformed_json_is_a_400_not_a_500(client):
    response = client.post("/api/v1/echo", "{not json", content_type="application/json")

    assert_error_body(response, 400, "parse_error")


@override_settings(ROOT_URLCONF=__name__)
def test_api_views_need_authentication_by_default(client):
    response = client.get("/api/v1/private")

    assert_error_body(response, 401, "not_authenticated")


def test_unknown_api_url_gets_json_404(client):
    response = client.get("/api/v1/does-not-exist")

    assert_error_body(response, 404, "not_found")


def test_a_well_formed_client_request_id_is_echoed(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="client-supplied-id-123")

    assert response["X-Request-ID"] == "client-supplied-id-123"


@pytest.mark.parametrize("bad", ["short", "has spaces in it!!", "x" * 300, "evil\r\nheader"])
def test_a_malformed_client_request_id_is_replaced(client, bad):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=bad)

    assert response["X-Request-ID"] != bad
    assert len(response["X-Request-ID"]) == 32


def test_request_ids_differ_between_requests(client):
    first = client.get("/healthz")["X-Request-ID"]
    second = client.get("/healthz")["X-Request-ID"]

    assert first != second


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    ["/healthz", "/api/v1/schema/", "/admin/login/", "/api/v1/docs/", "/api/v1/redoc/", "/nowhere"],
)
def test_security_headers_on_every_kind_of_page(client, admin_user, url):
    client.force_login(admin_user)

    response = client.get(url, secure=True)

    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "object-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert (
        "script-src 'self'" in csp
        and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    )
    assert "Access-Control-Allow-Origin" not in response


@override_settings(SECURE_HSTS_SECONDS=31536000, SECURE_HSTS_INCLUDE_SUBDOMAINS=True)
def test_hsts_is_sent_over_https(client):
    response = client.get("/healthz", secure=True)

    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@override_settings(SECURE_SSL_REDIRECT=True, SECURE_REDIRECT_EXEMPT=[r"^healthz$"])
def test_plain_http_is_redirected_to_https(client):
    response = client.get("/api/v1/schema/")

    assert response.status_code == 301
    assert response["Location"].startswith("https://")


def test_cors_is_closed_by_default(client):
    response = client.options(
        "/api/v1/schema/",
        HTTP_ORIGIN="https://evil.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )

    assert "Access-Control-Allow-Origin" not in response


def test_unknown_host_is_refused(client):
    response = client.get("/healthz", HTTP_HOST="evil.example")

    assert response.status_code == 400


@pytest.mark.django_db
def test_docs_pages_load_their_assets_from_this_server(admin_client):
    swagger = admin_client.get("/api/v1/docs/").content.decode()
    redoc = admin_client.get("/api/v1/redoc/").content.decode()

    for page in (swagger, redoc):
        assert "cdn." not in page and "unpkg" not in page and "jsdelivr" not in page
    assert "/static/drf_spectacular_sidecar/" in swagger
    assert "/static/drf_spectacular_sidecar/" in redoc


@override_settings(ROOT_URLCONF=__name__, DATA_UPLOAD_MAX_MEMORY_SIZE=1024)
def test_a_json_body_over_the_memory_limit_is_a_413_not_a_500(client):
    response = client.post(
        "/api/v1/echo", '{"name": "' + "x" * 5000 + '"}', content_type="application/json"
    )

    assert_error_body(response, 413, "request_too_large")
