from __future__ import annotations

import re
from pathlib import Path

import pytest

from apps.accounts.models import Role
from tests.factories import bearer, member
from tests.notify_support import Receiver

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


@pytest.fixture
def loopback(settings):
    """The explicit test setting that lets deliveries reach a receiver on loopback over http."""
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    settings.WEBHOOK_REQUIRE_HTTPS = False
    return settings


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def admin(db):
    return member(Role.ADMIN, email="admin@example.com")


@pytest.fixture
def admin_auth(admin):
    return bearer(admin.user, admin.organisation)


@pytest.fixture(scope="session")
def documented_verify():
    """The receiver verification code of docs/webhooks.md, executed as documented."""
    text = DOCS.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace["verify"]
