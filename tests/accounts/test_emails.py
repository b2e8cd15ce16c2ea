"""The generic email task: templates, plain-value arguments, no double sends."""

from __future__ import annotations

import pytest

from workers.emails import EmailTemplateError, render_email, send_email


@pytest.mark.parametrize(
    "template",
    ["verify_email", "account_exists", "password_reset", "password_changed", "invitation"],
)
def test_every_accounts_email_renders_subject_text_and_html(template):
    subject, text, html = render_email(
        template,
        {
            "email": "a@example.com",
            "full_name": "A",
            "verify_url": "https://x/verify?token=t",
            "reset_url": "https://x/reset?token=t",
            "accept_url": "https://x/accept?token=t",
            "organisation_name": "Acme",
            "inviter_name": "Bo",
            "role": "member",
            "expires_at": "2030-01-01 00:00 UTC",
            "valid_hours": 48,
            "valid_minutes": 60,
        },
    )

    assert subject and "\n" not in subject
    assert "https://x/" in text
    assert html is not None and "<a href=" in html


def test_values_are_escaped_in_html_but_not_in_text():
    _subject, text, html = render_email(
        "invitation",
        {"organisation_name": "<b>Acme</b>", "inviter_name": "A & B", "accept_url": "https://x"},
    )

    assert "<b>Acme</b>" in text
    assert "&lt;b&gt;Acme&lt;/b&gt;" in html


def test_a_subject_cannot_inject_headers(db, mailoutbox):
    send_email(
        template="invitation",
        to=["a@example.com"],
        context={"inviter_name": "x\r\nBcc: evil@example.com", "organisation_name": "Acme"},
    )

    assert "\n" not in mailoutbox[0].subject
    assert mailoutbox[0].bcc == []


def test_a_dedupe_key_sends_a_redelivered_message_once(db, mailoutbox):
    for _ in range(2):
        send_email(template="verify_email", to="a@example.com", context={}, dedupe_key="verify:1")

    assert len(mailoutbox) == 1


@pytest.mark.parametrize("template", ["../secrets", "Verify", "nope_missing", ""])
def test_bad_template_names_are_refused(template):
    with pytest.raises(EmailTemplateError):
        render_email(template, {})


def test_the_task_runs_on_the_email_queue():
    from lexiscore.celery import route_by_module

    assert route_by_module(send_email.name, (), {}, {})["queue"] == "email"
    assert send_email.acks_late is True
