"""Organisation A can never reach organisation B's objects (see tests/tenancy.py)."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from apps.accounts.models import Role
from tests.factories import (
    ApiKeyFactory,
    OrganisationFactory,
    api_key_header,
    bearer,
    member,
)
from tests.tenancy import (
    CAPABILITY_ENDPOINTS,
    LIST_ENDPOINTS,
    OBJECT_ENDPOINTS,
    call,
    db_fingerprint,
    load_registrations,
    random_id,
)

load_registrations()

PRINCIPALS = ["owner", "admin", "member", "viewer", "api_key"]


def headers_for(principal: str, organisation) -> dict[str, str]:
    if principal == "api_key":
        key = ApiKeyFactory(organisation=organisation, last_used_at=timezone.now())
        return api_key_header(key)
    membership = member(principal, organisation=organisation)
    return bearer(membership.user)


@pytest.fixture
def tenants(db):
    organisation_a = OrganisationFactory(name="A")
    member(Role.OWNER, organisation=organisation_a)
    organisation_b = OrganisationFactory(name="B")
    member(Role.OWNER, organisation=organisation_b)
    return organisation_a, organisation_b


def test_every_operation_with_an_id_in_the_schema_is_in_the_matrix():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    with_ids = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if re.search(r"\{[^}]+\}", path)
        for method in operations
        if method.lower() in {"get", "post", "put", "patch", "delete"}
    }
    registered = {endpoint.key for endpoint in OBJECT_ENDPOINTS} | CAPABILITY_ENDPOINTS

    missing = sorted(with_ids - registered)
    assert not missing, f"Register these in tests/tenancy.py: {missing}"


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("endpoint", OBJECT_ENDPOINTS, ids=str)
def test_another_organisations_object_is_not_found(api_client, tenants, endpoint, principal):
    organisation_a, organisation_b = tenants
    headers = headers_for(principal, organisation_a)
    foreign_id = endpoint.make(organisation_b)
    before = db_fingerprint()

    foreign = call(api_client, endpoint.method, endpoint.url(foreign_id), endpoint.body, **headers)
    unknown = call(api_client, endpoint.method, endpoint.url(random_id()), endpoint.body, **headers)

    assert db_fingerprint() == before
    assert foreign.status_code == unknown.status_code
    assert foreign.json()["error"]["code"] == unknown.json()["error"]["code"]
    if principal == "owner":
        assert foreign.status_code == 404
    else:
        assert foreign.status_code in (403, 404)
    assert str(foreign_id) not in foreign.content.decode()


@pytest.mark.parametrize("endpoint", LIST_ENDPOINTS, ids=str)
def test_lists_never_include_another_organisations_rows(api_client, tenants, endpoint):
    organisation_a, organisation_b = tenants
    headers = headers_for("owner", organisation_a)
    own_id = endpoint.make(organisation_a)
    foreign_id = endpoint.make(organisation_b)

    plain = api_client.get(endpoint.path, endpoint.query, **headers)
    smuggled = api_client.get(
        endpoint.path,
        {**endpoint.query, "organisation": str(organisation_b.id), "page_size": 1000},
        **headers,
    )

    for response in (plain, smuggled):
        assert response.status_code == 200
        ids = {str(row[endpoint.id_field]) for row in response.json()["results"]}
        assert own_id in ids
        assert foreign_id not in ids


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("endpoint", [e for e in LIST_ENDPOINTS if e.scoped_by_header], ids=str)
def test_choosing_another_organisation_by_header_is_not_found(
    api_client, tenants, endpoint, principal
):
    organisation_a, organisation_b = tenants
    headers = headers_for(principal, organisation_a)

    response = api_client.get(endpoint.path, HTTP_X_ORGANISATION=str(organisation_b.id), **headers)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organisation_not_found"


@pytest.mark.parametrize(
    "url", ["/api/v1/reports/", "/api/v1/webhooks/endpoints/", "/api/v1/jobs", "/api/v1/members/"]
)
def test_anonymous_calls_get_401_with_a_challenge(api_client, url):
    response = api_client.get(url)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
