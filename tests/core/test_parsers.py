"""Request bodies the parsers refuse answer 400 with the error body, never 500."""

from __future__ import annotations

import pytest

from tests.factories import bearer, member


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/v1/auth/token/", "/api/v1/auth/register/", "/api/v1/jobs"])
def test_json_nested_past_the_recursion_limit_is_a_400_not_a_500(client, url):
    body = "[" * 100_000 + "]" * 100_000

    response = client.post(url, body, content_type="application/json")

    assert response.status_code in (400, 401)  # /jobs asks for credentials first
    assert response.json()["error"]["code"] in ("parse_error", "not_authenticated")


@pytest.mark.django_db
def test_json_nested_past_the_recursion_limit_is_a_400_when_signed_in(client):
    owner = member()
    response = client.post(
        "/api/v1/jobs", "[" * 100_000 + "]" * 100_000, content_type="application/json",
        **bearer(owner.user, owner.organisation),
    )  # fmt: skip

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"
