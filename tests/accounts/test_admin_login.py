"""The admin login shares the sign-in brute-force guard."""

import pytest
from django.test import override_settings

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@override_settings(LOGIN_RATE_PER_ACCOUNT="3/15m", LOGIN_RATE_PER_IP="100/15m")
def test_admin_login_locks_an_account_after_repeated_failures(client):
    user = UserFactory(
        email="ops@example.com",
        password="Correct-horse-battery-9",
        is_staff=True,
        is_superuser=True,
    )

    failures = [
        client.post("/admin/login/", {"username": user.email, "password": "wrong"}).status_code
        for _ in range(3)
    ]
    locked = client.post(
        "/admin/login/", {"username": user.email, "password": "Correct-horse-battery-9"}
    )

    assert failures == [200, 200, 200]
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) > 0


def test_admin_login_still_lets_the_right_password_in(client):
    user = UserFactory(
        email="ops2@example.com",
        password="Correct-horse-battery-9",
        is_staff=True,
        is_superuser=True,
    )

    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": user.email, "password": "Correct-horse-battery-9", "next": "/admin/"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
