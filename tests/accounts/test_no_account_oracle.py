"""The public requests that email an address do the same work whether or not it has an account.

Registration, a verification link and a password reset answer the same for every address, and
must take the same time too: the request validates, counts and publishes one message, and what
depends on the account runs in the email worker. These tests check the work, not the clock (the
timings are measured by tests/accounts/bench_enumeration_timing.py).
"""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from kombu.exceptions import OperationalError as KombuOperationalError

from apps.accounts import tasks
from apps.accounts.models import Membership, User
from apps.accounts.network import RequestMeta
from apps.accounts.services import users as user_services
from apps.audit.models import AuditAction, AuditEvent
from apps.notifications.models import EmailOutbox
from tests.factories import UserFactory

PASSWORD = "Another-long-passphrase-1"
KNOWN = "known@example.com"
REQUESTS = {
    "register": (
        "/api/v1/auth/register/",
        lambda email: {"email": email, "password": PASSWORD, "organisation_name": "Acme"},
        tasks.register,
    ),
    "verification": (
        "/api/v1/auth/verify-email/resend/",
        lambda email: {"email": email},
        tasks.send_verification,
    ),
    "password-reset": (
        "/api/v1/auth/password-reset/",
        lambda email: {"email": email},
        tasks.send_password_reset,
    ),
}


def request_work(client, url: str, body: dict, task) -> tuple[int, list[str], list[dict]]:
    """(status, SQL run by the request, messages it published)."""
    with (
        mock.patch.object(task, "apply_async") as publish,
        CaptureQueriesContext(connection) as queries,
    ):
        response = client.post(url, body, format="json")
    return response.status_code, [q["sql"] for q in queries], [c.kwargs for c in publish.mock_calls]


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_the_request_does_the_same_work_with_or_without_an_account(api_client, db, name):
    UserFactory(email=KNOWN, email_verified_at=None)
    url, body, task = REQUESTS[name]

    known = request_work(api_client, url, body(KNOWN), task)
    unknown = request_work(api_client, url, body("nobody@example.com"), task)

    assert known[0] == unknown[0] == 202
    assert known[1] == unknown[1] == []  # not one query: nothing to time
    assert len(known[2]) == len(unknown[2]) == 1
    assert known[2][0].keys() == unknown[2][0].keys()
    assert known[2][0]["queue"] == "email"


def test_the_registration_message_is_sealed(api_client, db):
    url, body, task = REQUESTS["register"]

    _status, _sql, [message] = request_work(api_client, url, body("new@example.com"), task)

    sealed = message["kwargs"]["sealed"]
    assert "new@example.com" not in sealed
    assert "argon2" not in sealed
    opened = user_services.request_open(sealed)
    assert opened["email"] == "new@example.com"
    assert opened["password_hash"].startswith("argon2$")
    assert PASSWORD not in sealed and PASSWORD not in str(opened)
    assert isinstance(opened["meta"], RequestMeta)
    assert not User.objects.filter(email="new@example.com").exists()  # the worker creates it


@pytest.mark.parametrize("name", ["verification", "password-reset"])
def test_reset_and_verification_messages_carry_no_address_or_ip_in_the_clear(api_client, db, name):
    """Flower shows task arguments and dead letters keep them: who asked for a reset of which
    address, from which IP, is not for everyone who can see those."""
    UserFactory(email=KNOWN, email_verified_at=None)
    url, body, task = REQUESTS[name]

    _status, _sql, [message] = request_work(api_client, url, body(KNOWN), task)

    assert set(message["kwargs"]) == {"sealed"}
    assert KNOWN not in message["kwargs"]["sealed"] and "127.0.0.1" not in str(message)
    assert user_services.request_open(message["kwargs"]["sealed"])["email"] == KNOWN


def test_a_message_sealed_under_a_key_the_worker_lacks_is_retried_not_dead_lettered(
    api_client, db, settings
):
    """Key rotation: web restarts with [new, old] before the workers, which still hold [old]."""
    from celery.exceptions import Retry
    from cryptography.fernet import Fernet

    old = settings.FIELD_ENCRYPTION_KEYS[0]
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old]
    url, body, task = REQUESTS["password-reset"]
    _status, _sql, [message] = request_work(api_client, url, body(KNOWN), task)
    settings.FIELD_ENCRYPTION_KEYS = [old]

    with (
        mock.patch.object(tasks.send_password_reset, "retry", side_effect=Retry) as retry,
        pytest.raises(Retry),
    ):
        tasks.send_password_reset(**message["kwargs"])

    assert retry.call_args.kwargs["countdown"] == tasks.KEY_WAIT_SECONDS == 60
    assert retry.call_args.kwargs["max_retries"] == tasks.KEY_WAIT_TRIES == 30


def test_the_worker_creates_the_account_once_even_if_the_message_comes_twice(
    api_client, db, django_capture_on_commit_callbacks
):
    url, body, task = REQUESTS["register"]
    _status, _sql, [message] = request_work(api_client, url, body("new@example.com"), task)

    with django_capture_on_commit_callbacks():
        tasks.register(**message["kwargs"])
        tasks.register(**message["kwargs"])  # a redelivered message

    user = User.objects.get(email="new@example.com")
    assert user.check_password(PASSWORD)
    assert Membership.objects.filter(user=user).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.USER_REGISTERED).count() == 1
    assert list(EmailOutbox.objects.values_list("template", flat=True)) == ["verify_email"]


def test_a_second_registration_of_an_address_tells_its_owner(api_client, db):
    url, body, task = REQUESTS["register"]
    UserFactory(email=KNOWN)
    _status, _sql, [message] = request_work(api_client, url, body(KNOWN), task)

    tasks.register(**message["kwargs"])

    assert User.objects.filter(email=KNOWN).count() == 1
    assert list(EmailOutbox.objects.values_list("template", "recipients")) == [
        ("account_exists", [KNOWN])
    ]


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_with_the_broker_down_the_request_does_it_itself(api_client, db, name):
    UserFactory(email=KNOWN, email_verified_at=None)
    url, body, task = REQUESTS[name]
    address = "new@example.com" if name == "register" else KNOWN

    with mock.patch.object(task, "apply_async", side_effect=KombuOperationalError("down")):
        response = api_client.post(url, body(address), format="json")

    assert response.status_code == 202
    sent = list(EmailOutbox.objects.values_list("recipients", flat=True))
    assert sent == [[address]]
    if name == "register":
        assert User.objects.get(email=address).check_password(PASSWORD)


def test_the_tasks_are_registered_with_celery_and_acknowledged_late():
    from lexiscore.celery import app

    for task in (tasks.register, tasks.send_verification, tasks.send_password_reset):
        registered = app.tasks[task.name]
        assert registered.acks_late and registered.reject_on_worker_lost


def test_a_reset_whose_audit_write_fails_leaves_no_email_for_the_retry_to_repeat(db):
    """The task is retried on a transient database error; an email queued before the failure
    would be sent, and the retry would queue a second link."""
    from django.db import OperationalError

    UserFactory(email=KNOWN)

    with (
        mock.patch.object(user_services, "audit_record", side_effect=OperationalError("gone")),
        pytest.raises(OperationalError),
    ):
        user_services.password_reset_send(email=KNOWN, meta=RequestMeta())
    user_services.password_reset_send(email=KNOWN, meta=RequestMeta())

    assert list(EmailOutbox.objects.values_list("template", flat=True)) == ["password_reset"]


def test_waiting_for_a_key_leaves_the_tasks_own_retry_limit_as_it_was(api_client, db, settings):
    """Celery keeps retry()'s max_retries on the shared task object, where the task's
    autoretry of transient errors would use it ever after (30 tries instead of 5)."""
    from cryptography.fernet import Fernet

    from apps.core.crypto import DecryptionError

    old = settings.FIELD_ENCRYPTION_KEYS[0]
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old]
    url, body, task = REQUESTS["password-reset"]
    _status, _sql, [message] = request_work(api_client, url, body(KNOWN), task)
    settings.FIELD_ENCRYPTION_KEYS = [old]

    with pytest.raises(DecryptionError):  # called directly, retry() re-raises the error
        tasks.send_password_reset(**message["kwargs"])

    assert "override_max_retries" not in vars(tasks.send_password_reset)
    assert tasks.send_password_reset.max_retries == 5
