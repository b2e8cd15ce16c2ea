"""Report, weekly-usage, webhook-disabled and job emails through a real SMTP server on loopback."""

from __future__ import annotations

import email
import socket
import threading
from email.message import Message

import pytest
from aiosmtpd.controller import Controller

from apps.accounts.models import Role
from apps.core.models import DeadLetter
from apps.notifications import services as notifications
from apps.notifications.models import NotificationKind
from apps.reports import services
from tests.factories import member
from tests.notify_support import completed_job, free_port
from workers.emails import send_email


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp(settings):
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.PUBLIC_BASE_URL = "https://lexis.example.org"
    yield sink
    controller.stop()


def parts(message: Message) -> tuple[str, str]:
    text = html = ""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            text = part.get_payload(decode=True).decode()
        elif part.get_content_type() == "text/html":
            html = part.get_payload(decode=True).decode()
    return text, html


def unfold(header: str) -> str:
    """A long header is folded onto continuation lines (RFC 5322); the link has no spaces."""
    return "".join(header.split())


@pytest.fixture
def owner(db):
    return member(Role.OWNER, email="owner@example.com")


def run(django_capture_on_commit_callbacks, fn):
    from lexiscore.celery import app

    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            return fn()
    finally:
        app.conf.task_always_eager = False


def test_report_ready_email_arrives_with_both_parts_and_links(
    owner, smtp, django_capture_on_commit_callbacks
):
    job = completed_job(owner.organisation, owner.user)

    report = run(
        django_capture_on_commit_callbacks,
        lambda: services.report_request(
            organisation=owner.organisation,
            user=owner.user,
            kind="transcript",
            format="pdf",
            job_id=job.pk,
        ),
    )

    [(recipients, message)] = smtp.messages
    text, html = parts(message)
    assert recipients == ["owner@example.com"]
    assert message["Subject"] == "Your transcript report (PDF) is ready"
    download = f"https://lexis.example.org/api/v1/reports/{report.pk}/download"
    assert download in text and f'href="{download}"' in html
    assert "https://lexis.example.org/api/v1/notifications/unsubscribe?token=" in text
    assert "unsubscribe?token=" in html
    # RFC 8058 one-click unsubscribe: the same signed link, offered by the mail client.
    header = unfold(message["List-Unsubscribe"])
    assert header.startswith("<https://lexis.example.org/api/v1/notifications/unsubscribe?token=")
    assert header.endswith(">") and header[1:-1] in text
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_weekly_usage_email_goes_to_admins_who_did_not_opt_out(
    owner, smtp, django_capture_on_commit_callbacks
):
    admin = member(Role.ADMIN, organisation=owner.organisation, email="admin@example.com")
    member(Role.MEMBER, organisation=owner.organisation, email="member@example.com")
    opted_out = member(Role.ADMIN, organisation=owner.organisation, email="quiet@example.com")
    notifications.preference_update(user=opted_out.user, changes={"weekly_usage": False})

    run(django_capture_on_commit_callbacks, services.weekly_usage_reports_create)

    mine = {
        tuple(r): m
        for r, m in smtp.messages
        if r[0]
        in {"owner@example.com", "admin@example.com", "quiet@example.com", "member@example.com"}
    }
    assert sorted(mine) == [("admin@example.com",), ("owner@example.com",)]
    text, html = parts(mine[("admin@example.com",)])
    assert mine[("admin@example.com",)]["Subject"].startswith(
        f"Weekly usage of {owner.organisation.name}: 0 jobs"
    )
    assert "/api/v1/reports/" in text and "/download" in html
    assert "Unsubscribe from the weekly usage report" in html
    assert admin.user.email == "admin@example.com"


def test_the_unsubscribe_link_turns_the_kind_off(owner, client):
    url = notifications.unsubscribe_url(user=owner.user, kind=NotificationKind.WEEKLY_USAGE)

    response = client.get(url.split("lexis.example.org")[-1].replace("http://localhost:8000", ""))

    assert response.status_code == 200
    assert notifications.wants(user=owner.user, kind="weekly_usage") is False
    assert notifications.wants(user=owner.user, kind="report") is True


def test_the_one_click_post_from_the_header_unsubscribes(
    owner, smtp, client, django_capture_on_commit_callbacks
):
    from apps.audio_jobs import events

    job = completed_job(owner.organisation, owner.user)
    run(django_capture_on_commit_callbacks, lambda: events.job_finished(job))
    [(_recipients, message)] = smtp.messages
    url = unfold(message["List-Unsubscribe"])[1:-1].replace("https://lexis.example.org", "")

    # What a mail client sends (RFC 8058 section 3.2): a POST with this exact body, no cookies.
    response = client.post(
        url,
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 200
    assert notifications.wants(user=owner.user, kind=NotificationKind.JOB) is False


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "javascript:alert(1)",
        "https://x.example/a>, <https://evil.example/",
        "https://a\r\nBcc: x@y",
    ],
)
def test_no_list_unsubscribe_header_without_a_clean_link(url):
    from workers.emails import list_unsubscribe_headers

    assert list_unsubscribe_headers(url) == {}


def test_essential_mail_has_no_list_unsubscribe_header(owner, smtp):
    send_email(
        "password_changed",
        "owner@example.com",
        {"full_name": "Owner", "email": "owner@example.com"},
    )

    [(_recipients, message)] = smtp.messages
    assert message["List-Unsubscribe"] is None


def test_a_forged_unsubscribe_token_is_refused(client, db):
    response = client.get("/api/v1/notifications/unsubscribe?token=forged")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_unsubscribe_token"


def test_job_email_respects_the_preference_and_carries_an_unsubscribe_link(
    owner, smtp, django_capture_on_commit_callbacks
):
    from apps.audio_jobs import events

    job = completed_job(owner.organisation, owner.user)
    run(django_capture_on_commit_callbacks, lambda: events.job_finished(job))
    notifications.preference_update(user=owner.user, changes={"job": False})
    run(django_capture_on_commit_callbacks, lambda: events.job_finished(job))

    [(recipients, message)] = smtp.messages
    text, html = parts(message)
    assert recipients == ["owner@example.com"]
    assert message["Subject"] == "Your transcript of meeting.wav is ready"
    assert f"https://lexis.example.org/api/v1/jobs/{job.pk}" in text
    assert "Stop job emails" in html


class RefusingSMTP:
    """An SMTP server that answers every connection with 421 (service not available)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.sendall(b"421 4.3.2 Service not available, try later\r\n")
            conn.close()


def test_a_failing_smtp_server_is_retried_then_dead_lettered(db, settings):
    server = RefusingSMTP()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port

    result = send_email.apply(args=["report_ready", ["a@example.com"], {"kind": "Report"}])

    server.sock.close()
    assert result.failed()
    assert server.connections == send_email.max_retries + 1
    dead = DeadLetter.objects.get(task_name="workers.emails.send_email")
    assert dead.args[0] == "report_ready"
    assert dead.exception_type == "smtplib.SMTPConnectError"
    assert dead.queue == "email"
