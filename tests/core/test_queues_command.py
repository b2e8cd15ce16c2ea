"""`manage.py queues` with the broker unreachable: a one-line error and exit 1, no traceback."""

from __future__ import annotations

import socket

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_queues_reports_an_unreachable_broker_as_a_command_error():
    url = f"redis://127.0.0.1:{_closed_port()}/0"

    with pytest.raises(CommandError, match="Cannot read the broker"):
        call_command("queues", "--broker-url", url)
