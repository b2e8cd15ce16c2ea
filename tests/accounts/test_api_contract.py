"""What the OpenAPI schema promises about the accounts and audit endpoints, checked live."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from django.test import RequestFactory, override_settings
from drf_spectacular.generators import SchemaGenerator

from apps.accounts.models import Role
from apps.audit.middleware import AuditlogMiddleware
from tests.factories import bearer, member

OUR_PREFIXES = (
    "/api/v1/auth/",
    "/api/v1/me/",
    "/api/v1/organisations/",
    "/api/v1/members/",
    "/api/v1/invitations/",
    "/api/v1/api-keys/",
    "/api/v1/audit-events/",
)
METHODS = {"get", "post", "put", "patch", "delete"}
ROOT = Path(__file__).resolve().parents[2]


def our_operations() -> list[tuple[str, str, dict]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method, path, operation)
        for path, operations in schema["paths"].items()
        if path.startswith(OUR_PREFIXES)
        for method, operation in operations.items()
        if method in METHODS
    ]


OPERATIONS = our_operations()


def test_the_schema_lists_our_operations():
    assert len(OPERATIONS) >= 35


@pytest.mark.parametrize(
    ("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_every_operation_documents_its_errors(method, path, operation):
    errors = {code for code in operation["responses"] if code.startswith("4")}

    assert "429" in errors
    assert errors - {"429"}, f"{method} {path} documents no client error"
    for code in errors:
        content = operation["responses"][code]["content"]["application/json"]
        assert content["schema"]["$ref"].endswith("/Error")
    assert operation.get("summary")


def _secured(operation: dict) -> bool:
    security = operation.get("security", [])
    return bool(security) and {} not in security


SECURED = [(m, p, o) for m, p, o in OPERATIONS if _secured(o)]


@pytest.mark.parametrize(
    ("method", "path", "operation"), SECURED, ids=[f"{m} {p}" for m, p, _ in SECURED]
)
@pytest.mark.parametrize(
    "credentials",
    [{}, {"HTTP_AUTHORIZATION": "Bearer not-a-token"}, {"HTTP_X_API_KEY": "lxk_nope"}],
    ids=["none", "bad-bearer", "bad-api-key"],
)
@pytest.mark.django_db
def test_secured_operations_refuse_missing_or_invalid_credentials(
    api_client, method, path, operation, credentials
):
    url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)

    response = getattr(api_client, method)(url, {}, format="json", **credentials)

    assert response.status_code == 401
    assert response.json()["error"]["code"] in {
        "not_authenticated",
        "token_not_valid",
        "invalid_api_key",
    }


def test_no_serializer_exposes_all_model_fields():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "apps").rglob("*.py")
        if "migrations" not in path.parts
        and re.search(r"""fields\s*=\s*["']__all__["']""", path.read_text())
        and "serializers" in path.read_text()
    ]

    assert offenders == []


def test_rotating_secret_key_keeps_users_signed_in(api_client, db):
    user = member(Role.MEMBER).user
    headers = bearer(user)

    with override_settings(
        SECRET_KEY="a-brand-new-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        SECRET_KEY_FALLBACKS=["test-only-secret-key-not-used-anywhere-else-0123456789abcdefghij"],
    ):
        response = api_client.get("/api/v1/me/", **headers)

    assert response.status_code == 200


@override_settings(TRUSTED_PROXIES=[], TRUSTED_PROXY_COUNT=0)
def test_the_audit_middleware_does_not_trust_forwarded_addresses():
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="6.6.6.6")

    assert AuditlogMiddleware._get_remote_addr(request) == "203.0.113.9"
