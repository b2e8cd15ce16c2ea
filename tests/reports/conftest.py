from __future__ import annotations

import pytest

from apps.accounts.models import Role
from tests.factories import bearer, member


@pytest.fixture
def owner(db):
    return member(Role.OWNER, email="owner@example.com")


@pytest.fixture
def auth(owner):
    return bearer(owner.user, owner.organisation)


@pytest.fixture
def eager():
    from lexiscore.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False
