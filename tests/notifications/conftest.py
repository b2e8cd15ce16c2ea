"""Fixtures of the email outbox tests: the real SMTP servers of the report email tests."""

from __future__ import annotations

import pytest

from tests.reports.test_emails_smtp import RefusingSMTP, smtp
from tests.support.eager import eager_tasks

__all__ = ["eager", "refusing_smtp", "smtp"]


@pytest.fixture
def eager():
    """Run published tasks in-process (a publish becomes a send), as the email worker would."""
    with eager_tasks(propagate=False):
        yield


@pytest.fixture
def refusing_smtp(settings):
    """An SMTP server answering every connection with 421 (try later)."""
    server = RefusingSMTP()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield server
    server.sock.close()
