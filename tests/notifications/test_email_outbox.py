"""The email outbox: an email queued in a committed transaction is sent once, whatever the broker
or the SMTP server did meanwhile; a rolled-back one is never sent."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from apps.core.models import DeadLetter
from apps.notifications import services
from apps.notifications.models import EmailOutbox, EmailStatus
from workers import emails

CONTEXT = {"full_name": "Ada", "email": "ada@example.com"}


def queue(**overrides) -> EmailOutbox:
    return services.email_enqueue(
        **{"template": "password_changed", "to": "ada@example.com", "context": CONTEXT} | overrides
    )


def make_due(email: EmailOutbox) -> None:
    EmailOutbox.objects.filter(pk=email.pk).update(
        next_try_at=timezone.now() - timedelta(seconds=1),
        claimed_until=timezone.now() - timedelta(seconds=1),
    )


def test_a_queued_email_is_published_after_commit_and_sent_once(
    db, smtp, eager, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        email = queue()
        assert smtp.messages == []  # nothing leaves before the commit

    [(recipients, message)] = smtp.messages
    assert recipients == ["ada@example.com"]
    assert message["Subject"] == "Your LexisCore password was changed"
    email.refresh_from_db()
    assert (email.status, email.attempts) == (EmailStatus.SENT, 1)
    assert email.sent_at is not None and email.claimed_until is None
    assert email.context == {}  # links with tokens are not kept once sent
    # A redelivered or duplicated message sends nothing more.
    assert emails.send_email.apply(kwargs={"outbox_id": str(email.pk)}).get() == 0
    assert len(smtp.messages) == 1


def test_a_rolled_back_transaction_queues_nothing(db, django_capture_on_commit_callbacks):
    with (
        mock.patch.object(emails.send_email, "apply_async") as publish,
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        queue()
        raise RuntimeError("the finishing transaction failed")

    assert callbacks == []
    publish.assert_not_called()
    assert EmailOutbox.objects.count() == 0


def test_a_dedupe_key_queues_the_email_once(db, django_capture_on_commit_callbacks):
    with (
        mock.patch.object(emails.send_email, "apply_async") as publish,
        django_capture_on_commit_callbacks(execute=True),
    ):
        first = queue(dedupe_key="job:1:completed")
        second = queue(dedupe_key="job:1:completed")

    assert second.pk == first.pk
    assert EmailOutbox.objects.count() == 1
    assert [c.kwargs["kwargs"] for c in publish.call_args_list] == [{"outbox_id": str(first.pk)}]


@pytest.mark.django_db(transaction=True)
def test_an_email_queued_while_the_broker_is_down_is_sent_by_the_sweep(smtp, eager):
    down = KombuOperationalError("Error 111 connecting to redis:6379. Connection refused.")
    with mock.patch.object(emails.send_email, "apply_async", side_effect=down):
        with transaction.atomic():
            email = queue()
        # The commit went through; nothing raised into the caller.
        assert emails.send_due_emails() == 0  # not due yet: the sweep waits for the fast path
    assert EmailOutbox.objects.get().status == EmailStatus.PENDING

    make_due(email)
    published = emails.send_due_emails()

    assert published == 1
    [(recipients, _message)] = smtp.messages
    assert recipients == ["ada@example.com"]
    assert EmailOutbox.objects.get().status == EmailStatus.SENT
    assert emails.send_due_emails() == 0


def test_a_send_interrupted_by_a_dead_worker_is_sent_after_its_claim_expires(db, smtp, eager):
    email = queue()
    assert services.email_claim(outbox_id=str(email.pk)) is not None  # the worker then died
    # Its message is redelivered while the claim holds: skipped.
    assert emails.send_email.apply(kwargs={"outbox_id": str(email.pk)}).get() == 0
    assert emails.send_due_emails() == 0

    make_due(email)
    emails.send_due_emails()

    assert len(smtp.messages) == 1
    email.refresh_from_db()
    assert (email.status, email.attempts) == (EmailStatus.SENT, 2)


def test_a_transient_smtp_failure_is_retried_by_the_outbox_with_backoff(
    db, refusing_smtp, settings
):
    email = queue()

    before = timezone.now()
    result = emails.send_email.apply(kwargs={"outbox_id": str(email.pk)})

    assert result.successful() and result.get() == 0
    assert refusing_smtp.connections == 1  # no Celery retry loop: the outbox owns the retries
    email.refresh_from_db()
    assert email.status == EmailStatus.PENDING and email.attempts == 1
    assert email.last_error.startswith("SMTPConnectError")
    delay = (email.next_try_at - before).total_seconds()
    assert 47 <= delay <= 73  # 1 min +-20 %
    assert email.claimed_until == email.next_try_at
    # A copy of the message arriving early does not jump the backoff.
    assert emails.send_email.apply(kwargs={"outbox_id": str(email.pk)}).get() == 0
    assert refusing_smtp.connections == 1
    assert DeadLetter.objects.count() == 0


def test_the_last_failed_try_fails_the_email_and_dead_letters_it(db, refusing_smtp, settings):
    settings.EMAIL_OUTBOX_MAX_ATTEMPTS = 2
    email = queue()
    emails.send_email.apply(kwargs={"outbox_id": str(email.pk)})
    make_due(email)

    result = emails.send_email.apply(kwargs={"outbox_id": str(email.pk)})

    assert result.failed()
    email.refresh_from_db()
    assert (email.status, email.attempts) == (EmailStatus.FAILED, 2)
    letter = DeadLetter.objects.get(task_name="workers.emails.send_email")
    assert letter.kwargs == {"outbox_id": str(email.pk)}
    assert letter.exception_type == "workers.emails.EmailNotSent"
    assert letter.queue == "email"
    assert emails.send_due_emails() == 0  # failed emails wait for an operator


def test_a_failed_email_is_sent_when_an_operator_requeues_it(
    db, smtp, eager, django_capture_on_commit_callbacks
):
    email = queue(template="no_such_template")
    emails.send_email.apply(kwargs={"outbox_id": str(email.pk)})
    email.refresh_from_db()
    assert email.status == EmailStatus.FAILED  # a permanent error: no second try
    assert email.attempts == 1
    assert DeadLetter.objects.get().exception_type == "workers.emails.EmailNotSent"
    EmailOutbox.objects.filter(pk=email.pk).update(template="password_changed")  # fixed

    assert services.email_requeue(outbox_ids=[str(email.pk)]) == 1

    assert len(smtp.messages) == 1
    email.refresh_from_db()
    assert email.status == EmailStatus.SENT


def test_the_old_message_form_still_sends(db, smtp):
    sent = emails.send_email.apply(
        args=["password_changed", ["ada@example.com"], CONTEXT], kwargs={"dedupe_key": "old:1"}
    ).get()

    assert sent == 1
    assert [r for r, _ in smtp.messages] == [["ada@example.com"]]
    assert EmailOutbox.objects.count() == 0


def test_bad_recipients_are_logged_and_queue_nothing(db, caplog):
    assert queue(to=["not-an-address"]) is None

    assert EmailOutbox.objects.count() == 0
    assert "bad recipients" in caplog.text


def test_the_sweep_purges_sent_emails_after_the_dedupe_window(db):
    old, recent = queue(dedupe_key="a"), queue(dedupe_key="b")
    now = timezone.now()
    EmailOutbox.objects.filter(pk=old.pk).update(
        status=EmailStatus.SENT, sent_at=now - timedelta(days=8)
    )
    EmailOutbox.objects.filter(pk=recent.pk).update(
        status=EmailStatus.SENT, sent_at=now - timedelta(days=6)
    )

    emails.send_due_emails()

    assert list(EmailOutbox.objects.values_list("dedupe_key", flat=True)) == ["b"]


def test_the_sweep_runs_on_the_email_queue_from_beat(settings):
    from lexiscore.celery import route_by_module

    entry = settings.CELERY_BEAT_SCHEDULE["send-due-emails"]

    assert entry["task"] == emails.send_due_emails.name
    assert route_by_module(entry["task"], (), {}, {})["queue"] == "email"


def test_the_admin_lists_queued_emails_without_their_context(admin_client, db):
    email = queue(context={**CONTEXT, "reset_url": "https://x.example/reset?token=SECRET"})

    listing = admin_client.get("/admin/notifications/emailoutbox/")
    page = admin_client.get(f"/admin/notifications/emailoutbox/{email.pk}/change/")

    assert listing.status_code == page.status_code == 200
    assert "password_changed" in listing.content.decode()
    assert "SECRET" not in page.content.decode()


def test_an_email_whose_tries_never_end_fails_at_the_cap_with_a_dead_letter(db, settings):
    """A worker killed mid-send each time records nothing: the sweep must stop publishing it."""
    from apps.core.models import DeadLetter

    settings.EMAIL_OUTBOX_MAX_ATTEMPTS = 3
    email = queue()
    published = []
    with mock.patch.object(emails.send_email, "apply_async") as publish:
        for _ in range(3):
            assert services.email_claim(outbox_id=str(email.pk)) is not None
            make_due(email)  # the worker died: its claim ran out, nothing recorded
            published.append(services.email_outbox_sweep())
        published.append(services.email_outbox_sweep())  # failed: nothing more

    email.refresh_from_db()
    assert published == [1, 1, 0, 0]
    assert publish.call_count == 2
    assert email.status == EmailStatus.FAILED
    assert "none finished" in email.last_error
    dead = DeadLetter.objects.get(task_name="workers.emails.send_email")
    assert dead.kwargs == {"outbox_id": str(email.pk)}


def test_an_email_claimed_after_the_sweep_listed_it_is_not_failed(db, settings):
    """A worker takes the email between the sweep's listing and its update: it is mid-send."""
    settings.EMAIL_OUTBOX_MAX_ATTEMPTS = 3
    email = queue()
    past = timezone.now() - timedelta(seconds=1)
    EmailOutbox.objects.filter(pk=email.pk).update(attempts=3, next_try_at=past, claimed_until=past)
    real_atomic = services.transaction.atomic
    claimed = []

    def atomic_after_a_claim(*args, **kwargs):
        if not claimed:
            claimed.append(services.email_claim(outbox_id=str(email.pk)))
        return real_atomic(*args, **kwargs)

    with mock.patch.object(services.transaction, "atomic", side_effect=atomic_after_a_claim):
        failed = services._fail_exhausted(now=timezone.now(), limit=10)

    email.refresh_from_db()
    assert claimed[0] is not None
    assert failed == 0
    assert email.status == EmailStatus.PENDING
