"""Contract test: schemathesis generates requests from the live OpenAPI schema for every
operation and checks that none answers 5xx and that responses match the schema.

It grows with the API by itself: every new endpoint in the schema is exercised. Each operation
runs as its own test with a fresh organisation owner (so a destructive call like deactivating the
account only affects that operation's examples).
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from apps.accounts.models import Role
from tests.factories import member, tokens_for

# Real commits: requests go through the WSGI app, which closes the connection after each one.
pytestmark = [pytest.mark.django_db(transaction=True)]


# Loading the schema needs no database: pytest-django has configured Django before collection.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", get_wsgi_application())


@pytest.fixture
def owner_headers() -> dict[str, str]:
    owner = member(Role.OWNER)
    access = tokens_for(owner.user, owner.organisation).access
    return {"Authorization": f"Bearer {access}", "X-Organisation": str(owner.organisation.pk)}


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_contract(case, owner_headers):
    case.call_and_validate(
        headers=owner_headers,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )
