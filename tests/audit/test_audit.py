"""The audit trail: what is recorded, that it cannot change, and who can read it."""

from __future__ import annotations

import csv
import io

import pytest
from auditlog.models import LogEntry
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from apps.accounts.models import Role, User
from apps.audit.models import AppendOnlyError, AuditAction, AuditEvent
from apps.audit.services import audit_record
from tests.factories import DEFAULT_PASSWORD, bearer, member

BROWSER = "Mozilla/5.0 (TestBrowser)"


def sign_in(client, email, password=DEFAULT_PASSWORD, **extra):
    return client.post(
        "/api/v1/auth/token/",
        {"email": email, "password": password},
        format="json",
        REMOTE_ADDR="203.0.113.77",
        HTTP_USER_AGENT=BROWSER,
        **extra,
    )


# ---- What is recorded -------------------------------------------------------------------------
def test_a_sign_in_is_recorded_with_actor_organisation_ip_agent_and_request_id(api_client, db):
    owner = member(Role.OWNER)

    response = sign_in(api_client, owner.user.email, HTTP_X_REQUEST_ID="client-request-0001")

    event = AuditEvent.objects.get(action=AuditAction.LOGIN_SUCCEEDED)
    assert response.status_code == 200
    assert event.actor == owner.user
    assert event.actor_email == owner.user.email
    assert event.actor_type == "user"
    assert event.organisation == owner.organisation
    assert event.ip_address == "203.0.113.77"
    assert event.user_agent == BROWSER
    assert event.request_id == "client-request-0001" == response["X-Request-ID"]
    assert event.target_id == str(owner.user.public_id)
    assert abs((timezone.now() - event.occurred_at).total_seconds()) < 60


def test_a_failed_sign_in_is_recorded_without_trusting_forwarded_headers(api_client, db):
    response = sign_in(api_client, "Someone@Example.com", "bad", HTTP_X_FORWARDED_FOR="1.2.3.4")

    event = AuditEvent.objects.get(action=AuditAction.LOGIN_FAILED)
    assert response.status_code == 401
    assert event.actor is None
    assert event.actor_type == "anonymous"
    assert event.target_repr == "someone@example.com"
    assert event.ip_address == "203.0.113.77"
    assert event.request_id == response["X-Request-ID"]


def test_model_history_names_the_token_user_and_the_request(api_client, db):
    user = member(Role.OWNER).user

    response = api_client.patch(
        "/api/v1/me/",
        {"full_name": "Changed Name"},
        format="json",
        REMOTE_ADDR="198.51.100.4",
        HTTP_X_FORWARDED_FOR="6.6.6.6",
        **bearer(user),
    )

    entry = LogEntry.objects.get_for_object(user).latest("timestamp")
    assert entry.actor == user
    assert entry.remote_addr == "198.51.100.4"
    assert entry.cid == response["X-Request-ID"]
    assert entry.changes_dict["full_name"][1] == "Changed Name"
    assert AuditEvent.objects.get(action=AuditAction.PROFILE_UPDATED).actor == user


def test_model_history_never_holds_secrets(api_client, db):
    admin = member(Role.ADMIN)

    api_client.post("/api/v1/api-keys/", {"name": "k"}, format="json", **bearer(admin.user))

    for entry in LogEntry.objects.all():
        assert "key_hash" not in entry.changes_dict
        assert "password" not in entry.changes_dict
        assert "token_hash" not in entry.changes_dict


def test_events_recorded_outside_a_request_use_the_current_request_id(db):
    from apps.core.context import request_id_var

    token = request_id_var.set("task-carried-request-id")
    try:
        event = audit_record(action="test.thing", actor="system")
    finally:
        request_id_var.reset(token)

    assert event.request_id == "task-carried-request-id"
    assert event.actor_type == "system"


def test_events_outlive_the_user_and_organisation_they_mention(db):
    owner = member(Role.OWNER)
    event = audit_record(
        action="test.thing", actor=owner.user, organisation=owner.organisation, target=owner.user
    )

    organisation_id = owner.organisation.id

    User.objects.filter(pk=owner.user.pk).delete()
    owner.organisation.delete()

    kept = AuditEvent.objects.get(pk=event.pk)
    assert kept.actor_email == owner.user.email
    assert kept.organisation_id == organisation_id


# ---- Append-only ------------------------------------------------------------------------------
@pytest.fixture
def event(db):
    return audit_record(action="test.thing", actor="system")


def test_an_event_cannot_be_saved_again(event):
    event.action = "test.rewritten"

    with pytest.raises(AppendOnlyError):
        event.save()


def test_an_event_cannot_be_deleted(event):
    with pytest.raises(AppendOnlyError):
        event.delete()


@pytest.mark.parametrize("operation", ["update", "delete"])
def test_querysets_cannot_update_or_delete_events(event, operation):
    queryset = AuditEvent.objects.filter(pk=event.pk)

    with pytest.raises(AppendOnlyError):
        queryset.update(action="x") if operation == "update" else queryset.delete()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET action = 'x'",
        "DELETE FROM audit_auditevent",
    ],
)
def test_the_database_refuses_updates_and_deletes_from_any_client(event, sql):
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)

    assert AuditEvent.objects.get(pk=event.pk).action == "test.thing"


def test_the_admin_cannot_add_change_or_delete_events(admin_client, event):
    change = admin_client.post(
        f"/admin/audit/auditevent/{event.pk}/change/", {"action": "x", "actor_type": "system"}
    )
    delete = admin_client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"})
    add = admin_client.get("/admin/audit/auditevent/add/")

    assert change.status_code == 403
    assert delete.status_code == 403
    assert add.status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "test.thing"


def test_operators_export_events_as_csv_from_the_admin(admin_client, event):
    response = admin_client.post(
        "/admin/audit/auditevent/", {"action": "export_csv", "_selected_action": [event.pk]}
    )

    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[1][1] == "test.thing"


def test_the_api_offers_no_way_to_change_events(api_client, db):
    admin = member(Role.ADMIN)
    event = audit_record(action="test.thing", organisation=admin.organisation)
    headers = bearer(admin.user)

    responses = [
        api_client.delete(f"/api/v1/audit-events/{event.pk}/", **headers),
        api_client.patch(f"/api/v1/audit-events/{event.pk}/", {"action": "x"}, **headers),
        api_client.put(f"/api/v1/audit-events/{event.pk}/", {"action": "x"}, **headers),
        api_client.post("/api/v1/audit-events/", {"action": "x"}, format="json", **headers),
    ]

    assert [r.status_code for r in responses] == [405] * 4
    assert AuditEvent.objects.get(pk=event.pk).action == "test.thing"


# ---- Reading ----------------------------------------------------------------------------------
@pytest.fixture
def trail(db):
    admin = member(Role.ADMIN)
    other = member(Role.MEMBER, organisation=admin.organisation)
    elsewhere = member(Role.OWNER)
    audit_record(
        action=AuditAction.LOGIN_SUCCEEDED, actor=admin.user, organisation=admin.organisation
    )
    audit_record(action=AuditAction.LOGIN_FAILED, organisation=admin.organisation)
    audit_record(
        action=AuditAction.API_KEY_CREATED,
        actor=other.user,
        organisation=admin.organisation,
        target_type="accounts.apikey",
        target_id="k1",
    )
    audit_record(
        action=AuditAction.LOGIN_SUCCEEDED,
        actor=elsewhere.user,
        organisation=elsewhere.organisation,
    )
    return admin, other


def test_admins_list_their_organisations_events_newest_first(api_client, trail):
    admin, _ = trail

    response = api_client.get("/api/v1/audit-events/", **bearer(admin.user))

    actions = [e["action"] for e in response.json()["results"]]
    assert response.status_code == 200
    assert actions == ["api_key.created", "auth.login_failed", "auth.login_succeeded"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"action": "auth.login_failed"}, ["auth.login_failed"]),
        ({"action": "auth.*"}, ["auth.login_failed", "auth.login_succeeded"]),
        ({"target_type": "accounts.apikey", "target_id": "k1"}, ["api_key.created"]),
        ({"since": "2000-01-01T00:00:00Z", "until": "2001-01-01T00:00:00Z"}, []),
        ({"organisation": "00000000-0000-0000-0000-000000000000"}, None),
    ],
)
def test_admins_filter_events(api_client, trail, query, expected):
    admin, _ = trail

    response = api_client.get("/api/v1/audit-events/", query, **bearer(admin.user))

    actions = [e["action"] for e in response.json()["results"]]
    assert actions == (
        expected
        if expected is not None
        else ["api_key.created", "auth.login_failed", "auth.login_succeeded"]
    )


def test_admins_filter_events_by_actor(api_client, trail):
    admin, other = trail

    response = api_client.get(
        "/api/v1/audit-events/", {"actor": str(other.user.public_id)}, **bearer(admin.user)
    )

    assert [e["actor_id"] for e in response.json()["results"]] == [str(other.user.public_id)]


@pytest.mark.parametrize(
    "query", [{"since": "yesterday"}, {"actor": "nope"}, {"action": "x" * 100}]
)
def test_bad_filters_are_a_400(api_client, trail, query):
    admin, _ = trail

    response = api_client.get("/api/v1/audit-events/", query, **bearer(admin.user))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_members_and_viewers_cannot_read_the_trail(api_client, db, role):
    someone = member(role)

    listing = api_client.get("/api/v1/audit-events/", **bearer(someone.user))
    export = api_client.get("/api/v1/audit-events/export/", **bearer(someone.user))

    assert listing.status_code == export.status_code == 403


def test_admins_export_the_filtered_trail_as_csv(api_client, trail):
    admin, _ = trail
    audit_record(
        action="test.injection",
        organisation=admin.organisation,
        target_repr='=HYPERLINK("http://evil")',
    )

    response = api_client.get(
        "/api/v1/audit-events/export/", {"action": "test.*"}, **bearer(admin.user)
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment;" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["occurred_at", "action", "actor_type"]
    assert [row[1] for row in rows[1:]] == ["test.injection"]
    assert rows[1][11] == '\'=HYPERLINK("http://evil")'
    assert AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).count() == 1


def test_an_export_records_only_its_validated_filters(api_client, trail):
    """The query string can carry anything (undeclared names, NUL bytes PostgreSQL refuses): the
    append-only trail keeps what was applied, and the export answers 200, not 500."""
    admin, _ = trail

    response = api_client.get(
        "/api/v1/audit-events/export/?action=test.*&foo=%00bar&f%00o=x", **bearer(admin.user)
    )

    assert response.status_code == 200
    exported = AuditEvent.objects.get(action=AuditAction.AUDIT_EXPORTED)
    assert exported.metadata == {"filters": {"action": "test.*"}}


def test_a_head_of_the_export_exports_nothing_and_records_no_export(api_client, trail):
    admin, _ = trail

    head = api_client.head("/api/v1/audit-events/export/", **bearer(admin.user))
    bad = api_client.head("/api/v1/audit-events/export/?since=yesterday", **bearer(admin.user))

    assert head.status_code == 200
    assert head["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment;" in head["Content-Disposition"]
    assert b"".join(head.streaming_content) == b""
    assert bad.status_code == 400
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


def test_an_event_of_the_organisation_can_be_read(api_client, trail):
    admin, _ = trail
    event = AuditEvent.objects.filter(organisation=admin.organisation).first()

    response = api_client.get(f"/api/v1/audit-events/{event.pk}/", **bearer(admin.user))

    assert response.status_code == 200
    assert response.json()["id"] == str(event.pk)
