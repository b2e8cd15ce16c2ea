"""A job failed as poison (`too_many_attempts`) is announced like any failed job: the job.failed
webhook delivery, the failure email in the outbox and the live-feed event, in the transaction
that fails it, beside its dead letter."""

from __future__ import annotations

from unittest import mock

import pytest

from apps.audio_jobs import processing
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.core.models import DeadLetter
from apps.feed.models import FeedEvent
from apps.notifications.models import EmailOutbox
from apps.webhooks.models import WebhookDelivery
from tests.notify_support import processing_job, subscribed_owner


@pytest.fixture
def owner(db):
    return subscribed_owner()


@pytest.fixture(autouse=True)
def publishes():
    """The notification tasks are published after commit; the broker is not needed here."""
    with (
        mock.patch("workers.webhooks.deliver.apply_async") as deliver,
        mock.patch("workers.emails.send_email.apply_async") as send_email,
    ):
        yield deliver, send_email


def notifications(job: TranscriptionJob) -> dict:
    return {
        "webhooks": list(
            WebhookDelivery.objects.filter(payload__data__job_id=str(job.pk)).values_list(
                "event_type", "payload__data__error_code"
            )
        ),
        "emails": list(
            EmailOutbox.objects.filter(dedupe_key__startswith=f"job:{job.pk}:").values_list(
                "template", "recipients"
            )
        ),
        "feed": list(
            FeedEvent.objects.filter(subject_id=job.pk, type="job.failed").values_list(
                "data__error_code", flat=True
            )
        ),
    }


def test_a_job_failed_as_poison_sends_the_webhook_and_email_of_any_failed_job(
    owner, settings, publishes, django_capture_on_commit_callbacks
):
    settings.JOB_MAX_DELIVERIES = 3
    # Three deliveries were interrupted (the worker was killed each time); the fourth fails it.
    job = processing_job(owner, attempts=3, deliveries_ended=0)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = processing.job_process(job_id=str(job.pk))

    assert outcome == "poison"
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "too_many_attempts")
    assert notifications(job) == {
        "webhooks": [("job.failed", "too_many_attempts")],
        "emails": [("job_failed", ["creator@example.com"])],
        "feed": ["too_many_attempts"],
    }
    assert DeadLetter.objects.filter(task_id=f"job-{job.pk}").count() == 1
    deliver, send_email = publishes
    deliver.assert_called_once()
    send_email.assert_called_once()


def test_the_poison_path_notifies_exactly_as_the_other_failure_path(
    owner, settings, django_capture_on_commit_callbacks
):
    settings.JOB_MAX_DELIVERIES = 3
    poison = processing_job(owner, attempts=3, deliveries_ended=0)
    internal = processing_job(owner, attempts=1)

    with django_capture_on_commit_callbacks(execute=True):
        processing.job_process(job_id=str(poison.pk))
        processing.job_fail_unexpectedly(
            job_id=str(internal.pk), code="internal_error", message="x"
        )

    poisoned, failed = notifications(poison), notifications(internal)
    assert [e for e, _code in poisoned["webhooks"]] == [e for e, _code in failed["webhooks"]]
    assert poisoned["emails"] == failed["emails"] == [("job_failed", ["creator@example.com"])]
    assert len(poisoned["feed"]) == len(failed["feed"]) == 1
