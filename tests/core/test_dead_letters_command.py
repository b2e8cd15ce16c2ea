"""`manage.py dead_letters`: ids as the operator types them, clear errors for bad arguments, and a
non-zero exit when a message could not be requeued."""

from __future__ import annotations

import uuid
from io import StringIO
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.core.models import DeadLetter

pytestmark = pytest.mark.django_db


def dead_letter(**fields) -> DeadLetter:
    return DeadLetter.objects.create(
        **{
            "task_name": "tests.support.tasks.x",
            "task_id": uuid.uuid4().hex,  # one pending letter per task id
            "queue": "email",
            **fields,
        }
    )


def test_requeue_is_a_failure_when_the_broker_refuses_the_message():
    row = dead_letter()
    err = StringIO()

    with (
        mock.patch("lexiscore.celery.app.send_task", side_effect=OSError("connection refused")),
        pytest.raises(CommandError, match="1 not requeued"),
    ):
        call_command("dead_letters", "requeue", str(row.pk), stderr=err)

    assert "The broker refused the message" in err.getvalue()
    row.refresh_from_db()
    assert row.status == DeadLetter.Status.PENDING


def test_requeue_all_is_a_failure_when_one_message_is_refused():
    sent, refused = dead_letter(args=["a"]), dead_letter(args=["b"])

    def send_task(name, args=None, kwargs=None, queue=None):
        if args == ["b"]:
            raise OSError("connection refused")

    with (
        mock.patch("lexiscore.celery.app.send_task", side_effect=send_task),
        pytest.raises(CommandError, match=r"Requeued 1 message.*1 not requeued"),
    ):
        call_command("dead_letters", "requeue", "--all", stderr=StringIO())

    sent.refresh_from_db()
    refused.refresh_from_db()
    assert (sent.status, refused.status) == ("requeued", "pending")


def test_requeue_finds_an_id_written_in_capitals_or_without_hyphens():
    first, second = dead_letter(), dead_letter()
    out = StringIO()

    with mock.patch("lexiscore.celery.app.send_task"):
        call_command("dead_letters", "requeue", str(first.pk).upper(), second.pk.hex, stdout=out)

    assert "Requeued 2 message(s)" in out.getvalue()


@pytest.mark.parametrize(
    "args, message",
    [
        (["requeue", "not-a-uuid"], "not a dead letter id"),
        (["list", "--limit", "-1"], "must be a whole number >= 1"),
        (["list", "--limit", "0"], "must be a whole number >= 1"),
        (["purge", "--older-than-days", "-1", "--yes"], "must be a whole number >= 0"),
    ],
)
def test_bad_arguments_are_a_command_error_not_a_traceback(args, message):
    row = dead_letter()

    with pytest.raises(CommandError, match=message):
        call_command("dead_letters", *args)

    assert DeadLetter.objects.filter(pk=row.pk).exists()  # a negative age purged nothing
