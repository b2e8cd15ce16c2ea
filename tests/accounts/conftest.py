"""Fixtures of the accounts tests (the helpers themselves live in tests/factories.py)."""

from __future__ import annotations

import pytest

from apps.accounts.models import Role
from tests.factories import member
from tests.support.eager import eager_tasks


@pytest.fixture
def celery_eager():
    """Run tasks in-process (emails land in `mailoutbox`); pair with on-commit capture."""
    with eager_tasks(propagate=True):
        yield


@pytest.fixture
def send_emails(celery_eager, django_capture_on_commit_callbacks):
    """A context manager: `with send_emails(): ...` runs on-commit callbacks, sending emails."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def owner(db):
    return member(Role.OWNER)


@pytest.fixture
def org(owner):
    return owner.organisation
