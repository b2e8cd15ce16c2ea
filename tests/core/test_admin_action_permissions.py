"""Every admin action names the permission it needs: a staff user who may only view a list runs
none of its actions that change something.

Django offers and runs an action to anyone who may view the changelist unless the action declares
`allowed_permissions`. The tests below walk every registered ModelAdmin and every one of its
actions (Django's `delete_selected` included), so an action added later is covered without a
change here; a model added to the admin needs a row in `every_model` (the test says so).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from unittest import mock

import pytest
from auditlog.models import LogEntry
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import SUCCESS, get_messages
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.accounts.models import Role, User
from apps.audio_jobs.models import JobStatus, TranscriptionJob, Upload
from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.models import DeadLetter, PendingDeletion
from apps.feed.models import FeedEvent, FeedEventType
from apps.notifications.models import EmailOutbox, EmailStatus
from apps.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from tests.factories import (
    ApiKeyFactory,
    InvitationFactory,
    OrganisationFactory,
    UserFactory,
    member,
    tokens_for,
)

pytestmark = pytest.mark.django_db

# Actions that only read (and so need no more than the view permission): (model label, action).
READ_ONLY_ACTIONS = {("audit.AuditEvent", "export_csv")}


def _registered_actions() -> list[tuple[str, str]]:
    """(model label, action name) of every action of every registered ModelAdmin, before any
    permission filtering (`get_actions` for a superuser is compared with it below)."""
    return sorted(
        (model._meta.label, name)
        for model, model_admin in admin.site._registry.items()
        for _func, name, _description in model_admin._get_base_actions()
    )


ACTIONS = _registered_actions()


def _admin_of(label: str):
    for model, model_admin in admin.site._registry.items():
        if model._meta.label == label:
            return model, model_admin
    raise LookupError(label)


def _request_as(user: User):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def _staff_with(*permissions: tuple[type, str]) -> User:
    """A verified staff user holding exactly these permissions, as (model, "view"|"change"|...)."""
    staff = UserFactory(is_staff=True)
    for model, action in permissions:
        content_type = ContentType.objects.get_for_model(model)
        staff.user_permissions.add(
            Permission.objects.get(
                content_type=content_type, codename=f"{action}_{model._meta.model_name}"
            )
        )
    return User.objects.get(pk=staff.pk)  # a fresh instance: permissions are cached per instance


@pytest.fixture
def every_model(db):
    """Rows of every registered model, in the states their actions act on (an active and a
    deactivated user, a queued and a failed job, a failed email...), so that an action that ran
    would change something."""
    owner = member(Role.OWNER)
    organisation = owner.organisation
    UserFactory(is_active=False)
    OrganisationFactory(is_active=False)
    InvitationFactory(organisation=organisation)
    ApiKeyFactory(organisation=organisation)
    Group.objects.create(name="operators")
    tokens_for(owner.user)
    BlacklistedToken.objects.create(token=OutstandingToken.objects.filter(user=owner.user).first())
    tokens_for(owner.user)  # one not blacklisted
    TranscriptionJob.objects.create(organisation=organisation, status=JobStatus.QUEUED)
    TranscriptionJob.objects.create(organisation=organisation, status=JobStatus.FAILED)
    Upload.objects.create(
        organisation=organisation,
        key=f"org/{organisation.pk}/uploads/{uuid.uuid4()}.bin",
        max_size=1024,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    DeadLetter.objects.create(
        task_name="workers.webhooks.deliver", task_id="t-1", queue="webhooks", args=[7]
    )
    PendingDeletion.objects.create(key="reports/x/failed-before.pdf", attempts=2)
    EmailOutbox.objects.create(
        template="password_changed",
        recipients=["someone@example.com"],
        status=EmailStatus.FAILED,
        next_try_at=timezone.now(),
    )
    FeedEvent.objects.create(
        organisation=organisation, type=FeedEventType.choices[0][0], subject_id=uuid.uuid4()
    )
    audit_record(action=AuditAction.PROFILE_UPDATED, actor=owner.user, target=owner.user)
    endpoint, _disabled = (
        WebhookEndpoint.objects.create(
            organisation=organisation,
            url=f"https://hooks.example.com/{n}",
            event_types=["job.completed"],
            secret="whsec_AAAA",
            is_active=active,
        )
        for n, active in enumerate((True, False))
    )
    WebhookDelivery.objects.create(
        organisation=organisation,
        endpoint=endpoint,
        event_id="msg_admin",
        event_type="job.completed",
        payload={},
        status=DeliveryStatus.FAILED,
    )
    LogEntry.objects.log_create(owner.user, action=LogEntry.Action.UPDATE, changes={"x": [1, 2]})
    return owner


def _snapshot() -> dict[str, list[dict]]:
    """Every row of every table the admin shows."""
    return {
        model._meta.label: list(model._default_manager.order_by("pk").values())
        for model in admin.site._registry
    }


def test_every_action_names_its_permission():
    assert ACTIONS, "no admin action found: is the admin registry loaded?"
    missing = [
        (label, name)
        for label, name in ACTIONS
        if not getattr(_admin_of(label)[1].get_action(name)[0], "allowed_permissions", None)
    ]
    assert missing == [], "add permissions=[...] to these admin actions"
    view_only = [
        (label, name)
        for label, name in ACTIONS
        if set(_admin_of(label)[1].get_action(name)[0].allowed_permissions) == {"view"}
    ]
    assert set(view_only) == READ_ONLY_ACTIONS


def test_the_enumeration_matches_what_a_superuser_is_offered():
    superuser = UserFactory(is_staff=True, is_superuser=True)
    offered = sorted(
        (model._meta.label, name)
        for model, model_admin in admin.site._registry.items()
        for name in model_admin.get_actions(_request_as(superuser))
    )
    # A superuser gets every action but those an admin forbids to everyone (no deletes in a
    # read-only admin), so nothing offered escapes the walk above.
    assert set(offered) <= set(ACTIONS)
    assert ("accounts.User", "deactivate_users") in offered
    assert ("core.DeadLetter", "requeue") in offered


@pytest.mark.parametrize(("label", "action"), ACTIONS)
def test_view_only_staff_can_neither_see_nor_run_the_action(client, every_model, label, action):
    model, model_admin = _admin_of(label)
    staff = _staff_with((model, "view"))
    assert model_admin.has_view_permission(_request_as(staff))
    offered = model_admin.get_actions(_request_as(staff))
    if (label, action) in READ_ONLY_ACTIONS:
        assert action in offered
        return
    assert action not in offered
    selected = [str(pk) for pk in model._default_manager.values_list("pk", flat=True)]
    assert selected, f"add a row of {label} to the every_model fixture"
    client.force_login(staff)
    before = _snapshot()

    with (
        mock.patch("celery.app.task.Task.apply_async") as apply_async,
        mock.patch("celery.app.base.Celery.send_task") as send_task,
    ):
        response = client.post(
            reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"),
            # "post": the confirmation of delete_selected, which would delete at once.
            {"action": action, "_selected_action": selected, "index": "0", "post": "yes"},
        )

    assert response.status_code in (200, 302, 403)
    assert not response.has_header("Content-Disposition")
    assert not [m for m in get_messages(response.wsgi_request) if m.level == SUCCESS]
    assert _snapshot() == before
    apply_async.assert_not_called()
    send_task.assert_not_called()


@pytest.mark.parametrize("label", sorted({label for label, _action in ACTIONS}))
def test_staff_with_the_models_permissions_are_offered_what_a_superuser_is(label):
    model, model_admin = _admin_of(label)
    superuser = UserFactory(is_staff=True, is_superuser=True)
    staff = _staff_with((model, "view"), (model, "change"), (model, "delete"))

    assert set(model_admin.get_actions(_request_as(staff))) == set(
        model_admin.get_actions(_request_as(superuser))
    )


def test_change_permission_runs_deactivate_users(client):
    victim = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(_staff_with((User, "view"), (User, "change")))

    response = client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "deactivate_users", "_selected_action": [str(victim.pk)], "index": "0"},
    )

    assert response.status_code == 302
    victim.refresh_from_db()
    assert victim.is_active is False


def test_change_permission_runs_revoke_keys(client):
    api_key = ApiKeyFactory()
    client.force_login(_staff_with((type(api_key), "view"), (type(api_key), "change")))

    response = client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [str(api_key.pk)], "index": "0"},
    )

    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None


def test_change_permission_runs_an_action_of_a_read_only_admin(
    client, django_capture_on_commit_callbacks
):
    """Dead letters have no editable form (`has_change_permission` is False for everyone); their
    requeue asks for the model's change permission itself."""
    dead_letter = DeadLetter.objects.create(
        task_name="workers.webhooks.deliver", task_id="t-9", queue="webhooks", args=[7]
    )
    staff = _staff_with((DeadLetter, "view"), (DeadLetter, "change"))
    client.force_login(staff)

    with (
        mock.patch("lexiscore.celery.app.send_task") as send_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = client.post(
            reverse("admin:core_deadletter_changelist"),
            {"action": "requeue", "_selected_action": [str(dead_letter.pk)], "index": "0"},
        )

    assert response.status_code == 302
    dead_letter.refresh_from_db()
    assert dead_letter.status != DeadLetter.Status.PENDING
    send_task.assert_called_once()
    # The form stays read-only for them.
    change = client.post(
        reverse("admin:core_deadletter_change", args=[dead_letter.pk]), {"status": "pending"}
    )
    assert change.status_code == 403
