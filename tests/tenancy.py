"""The cross-tenant matrix: every object endpoint, called by organisation A with B's ids.

Every operation of the OpenAPI schema whose path holds an id must be registered here with
`object_endpoint(...)` (tests/accounts/test_tenancy_matrix.py fails, naming the operation, when
one is missing). For each, the matrix seeds organisations A and B, then calls the operation as
A's owner, member, viewer and API key with the id of B's object, and asserts:

* the answer is the error body with 404 (owners) or the same status a random, non-existent id
  gets (other roles may be refused by role first, identically for both ids: no oracle);
* no row of the tenant apps changed (a fingerprint of their tables before and after).

List endpoints registered with `list_endpoint(...)` are called by A (also with
`?organisation=<B>` and `X-Organisation: <B>`) and must never return B's rows.

Later apps register theirs, e.g. in tests/jobs/test_tenancy.py (imported by the matrix through
`TENANCY_MODULES` below) or directly in this file.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.utils import timezone

from apps.accounts.models import Organisation, Role

# Modules that register endpoints when imported (add yours).
TENANCY_MODULES: list[str] = [
    "tests.tenancy",
    "tests.webhooks.tenancy",
    "tests.audio_jobs.tenancy",
]
# Apps whose tables must not change when a cross-tenant call is refused (add yours).
TENANT_APP_LABELS: list[str] = [
    "accounts",
    "audit",
    "audio_jobs",
    "reports",
    "webhooks",
    "notifications",
]


@dataclass(frozen=True)
class ObjectEndpoint:
    method: str
    path: str  # as the schema writes it: "/api/v1/members/{member_id}/"
    make: Callable[[Organisation], Any]  # creates an object of the organisation, returns its id
    body: dict[str, Any] | None = None
    format: str = "json"

    @property
    def key(self) -> tuple[str, str]:
        return (self.method.upper(), self.path)

    def url(self, object_id: Any) -> str:
        return re.sub(r"\{[^}]+\}", str(object_id), self.path)

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"


@dataclass(frozen=True)
class ListEndpoint:
    path: str
    make: Callable[[Organisation], Any]  # creates an object of the organisation, returns its id
    id_field: str = "id"
    query: dict[str, str] = field(default_factory=dict)
    # False for lists of the caller's own things across organisations (not chosen by header).
    scoped_by_header: bool = True

    def __str__(self) -> str:
        return f"GET {self.path}"


OBJECT_ENDPOINTS: list[ObjectEndpoint] = []
LIST_ENDPOINTS: list[ListEndpoint] = []
# Operations whose path holds something other than an object of a tenant: a capability token
# (whoever has it may use it, whichever organisation they belong to), or a name every tenant
# shares. Each is tested on its own.
CAPABILITY_ENDPOINTS: set[tuple[str, str]] = {
    ("GET", "/api/v1/shared/{token}"),  # tests/audio_jobs/test_shares.py
    # A model's name, the same for everyone (tests/openai_compat/test_api.py).
    ("GET", "/api/openai/v1/models/{model}"),
}


def object_endpoint(
    method: str,
    path: str,
    make: Callable[[Organisation], Any],
    body: dict[str, Any] | None = None,
) -> None:
    OBJECT_ENDPOINTS.append(ObjectEndpoint(method.upper(), path, make, body))


def list_endpoint(path: str, make: Callable[[Organisation], Any], **kwargs: Any) -> None:
    LIST_ENDPOINTS.append(ListEndpoint(path, make, **kwargs))


def load_registrations() -> None:
    for module in TENANCY_MODULES:
        importlib.import_module(module)


def db_fingerprint(app_labels: list[str] | None = None) -> str:
    """A digest of every row of the tenant apps' tables."""
    digest = hashlib.sha256()
    for label in app_labels or TENANT_APP_LABELS:
        for model in sorted(apps.get_app_config(label).get_models(), key=lambda m: m._meta.label):
            digest.update(model._meta.label.encode())
            for row in model._base_manager.order_by("pk").values_list():
                digest.update(repr(row).encode())
    return digest.hexdigest()


def call(client: Any, method: str, url: str, body: Any = None, **headers: Any) -> Any:
    return getattr(client, method.lower())(url, data=body, format="json", **headers)


def random_id() -> uuid.UUID:
    return uuid.uuid4()


# ---- Registrations of the accounts and audit endpoints ----------------------------------------
def _member_of(organisation: Organisation) -> str:
    from tests.factories import MembershipFactory

    return str(MembershipFactory(organisation=organisation, role=Role.MEMBER).id)


def _invitation_of(organisation: Organisation) -> str:
    from tests.factories import InvitationFactory

    return str(InvitationFactory(organisation=organisation).id)


def _api_key_of(organisation: Organisation) -> str:
    from tests.factories import ApiKeyFactory

    return str(ApiKeyFactory(organisation=organisation, last_used_at=timezone.now()).id)


def _audit_event_of(organisation: Organisation) -> str:
    from apps.audit.services import audit_record

    return str(audit_record(action="test.seeded", organisation=organisation).id)


def _organisation(organisation: Organisation) -> str:
    return str(organisation.id)


object_endpoint("GET", "/api/v1/organisations/{organisation_id}/", _organisation)
object_endpoint("PATCH", "/api/v1/organisations/{organisation_id}/", _organisation, {"name": "x"})
object_endpoint("POST", "/api/v1/organisations/{organisation_id}/leave/", _organisation)
object_endpoint("GET", "/api/v1/members/{member_id}/", _member_of)
object_endpoint("PATCH", "/api/v1/members/{member_id}/", _member_of, {"role": "viewer"})
object_endpoint("DELETE", "/api/v1/members/{member_id}/", _member_of)
object_endpoint("GET", "/api/v1/invitations/{invitation_id}/", _invitation_of)
object_endpoint("DELETE", "/api/v1/invitations/{invitation_id}/", _invitation_of)
object_endpoint("POST", "/api/v1/invitations/{invitation_id}/resend/", _invitation_of)
object_endpoint("GET", "/api/v1/api-keys/{api_key_id}/", _api_key_of)
object_endpoint("DELETE", "/api/v1/api-keys/{api_key_id}/", _api_key_of)
object_endpoint("GET", "/api/v1/audit-events/{event_id}/", _audit_event_of)

list_endpoint("/api/v1/members/", _member_of)
list_endpoint("/api/v1/invitations/", _invitation_of)
list_endpoint("/api/v1/api-keys/", _api_key_of)
list_endpoint("/api/v1/audit-events/", _audit_event_of)
list_endpoint("/api/v1/organisations/", _organisation, scoped_by_header=False)


def _feed_event_of(organisation: Organisation) -> str:
    from apps.feed.services import feed_publish

    return str(feed_publish(organisation_id=organisation.pk, type="job.queued", data={}).id)


list_endpoint("/api/v1/events", _feed_event_of, query={"after": "0"})
