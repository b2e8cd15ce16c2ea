"""Completing a job never raises after its COMPLETED commit, and one notification that cannot be
published (broker blip) stops no other: the email is in the outbox, the webhook delivery in its
table, and beat's sweeps publish whatever the commit hooks could not."""

from __future__ import annotations

from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus
from apps.core.models import DeadLetter
from apps.notifications.models import EmailOutbox, EmailStatus
from apps.webhooks.models import DeliveryStatus, WebhookDelivery
from tests.notify_support import processing_job, subscribed_owner
from workers.engines.base import TranscriptionResult

pytestmark = pytest.mark.django_db(transaction=True)

BROKER_DOWN = KombuOperationalError("Error 111 connecting to redis:6379. Connection refused.")


@pytest.fixture
def job():
    return processing_job(subscribed_owner())


def result() -> TranscriptionResult:
    return TranscriptionResult(
        text="hi",
        language="en",
        language_probability=1.0,
        duration=1.0,
        segments=[],
        task="transcribe",
        engine_info={},
    )


def test_a_failing_webhook_publish_does_not_stop_the_email_or_raise(job):
    with (
        mock.patch("workers.webhooks.deliver.apply_async", side_effect=BROKER_DOWN),
        mock.patch("workers.emails.send_email.apply_async") as send_email,
    ):
        outcome = processing._complete(job, result(), processing_seconds=1.0)

    assert outcome == "completed"
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    email = EmailOutbox.objects.get()
    assert (email.template, email.recipients) == ("job_completed", ["creator@example.com"])
    assert email.dedupe_key == f"job:{job.pk}:completed"
    send_email.assert_called_once()
    assert send_email.call_args.kwargs["kwargs"] == {"outbox_id": str(email.pk)}
    assert send_email.call_args.kwargs["headers"] == {"job_id": str(job.pk)}
    # The delivery waits for beat's due-delivery sweep.
    assert WebhookDelivery.objects.get().status == DeliveryStatus.PENDING


def test_a_failing_email_publish_does_not_stop_the_webhooks_or_raise(job):
    with (
        mock.patch("workers.webhooks.deliver.apply_async") as deliver,
        mock.patch("workers.emails.send_email.apply_async", side_effect=BROKER_DOWN),
    ):
        outcome = processing._fail(job, "unsupported_media", "Not audio.")

    assert outcome is None
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "unsupported_media")
    deliver.assert_called_once_with(args=[str(WebhookDelivery.objects.get().pk)])
    assert EmailOutbox.objects.get().template == "job_failed"


def test_with_the_broker_down_the_job_completes_and_its_email_is_sent_later(job, mailoutbox):
    from lexiscore.celery import app
    from workers.emails import send_due_emails
    from workers.transcription import transcribe_job

    with (
        mock.patch.object(
            processing,
            "_run",
            lambda job, deadline: processing._complete(job, result(), processing_seconds=1.0),
        ),
        mock.patch("workers.webhooks.deliver.apply_async", side_effect=BROKER_DOWN),
        mock.patch("workers.emails.send_email.apply_async", side_effect=BROKER_DOWN),
    ):
        task = transcribe_job.apply(args=[str(job.pk)])

    assert task.successful() and task.get() == "completed"
    assert DeadLetter.objects.count() == 0  # no false dead letter for a job that succeeded
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert mailoutbox == []
    # The broker is back (tasks run in-process); the outbox sweep sends the email once it is due.
    EmailOutbox.objects.update(next_try_at=timezone.now())
    app.conf.task_always_eager = True
    try:
        send_due_emails()
    finally:
        app.conf.task_always_eager = False

    [message] = mailoutbox
    assert message.to == ["creator@example.com"]
    assert message.subject == "Your transcript of meeting.wav is ready"
    assert EmailOutbox.objects.get().status == EmailStatus.SENT


def test_a_transcript_without_word_timestamps_counts_the_words_of_its_text(job):
    untimed = result()
    untimed.text = "Hello there, this is five words and more"

    with (
        mock.patch("workers.emails.send_email.apply_async"),
        mock.patch("workers.webhooks.deliver.apply_async"),
    ):
        processing._complete(job, untimed, processing_seconds=1.0)

    job.refresh_from_db()
    assert job.transcript.word_count == 8
