"""Benchmark, driven by pytest for its test database (run it by path): do the public endpoints
that take an email address answer in the same time whether or not the address has an account?

    DATABASE_URL=... python -m pytest bench/accounts/enumeration_timing.py -s -p no:randomly

Each endpoint is called alternately for an address with an account and one without (fresh
addresses, so no cache or counter favours either), in committed transactions as in production,
and the client-side times are compared: median and 10th/90th percentiles in ms, and the
difference of the medians with a bootstrap 95 % interval. The work that depends on the account
runs in the email worker, which the client does not wait for, so it is not run here.
"""

from __future__ import annotations

import random
import statistics
import time

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tests.factories import UserFactory

ROUNDS = 60
PASSWORD = "Another-long-passphrase-1"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("_no_limits"),
]


@pytest.fixture
def _no_limits():
    with override_settings(
        PASSWORD_RESET_RATE_PER_ACCOUNT="100000/h",
        PASSWORD_RESET_RATE_PER_IP="100000/h",
        RATE_LIMIT_ANON="100000/m",
    ):
        yield


def timed(client: APIClient, url: str, body: dict) -> float:
    started = time.perf_counter()
    response = client.post(url, body, format="json")
    elapsed = time.perf_counter() - started
    assert response.status_code == 202, response.content
    return elapsed * 1000


def summary(name: str, known: list[float], unknown: list[float]) -> str:
    def spread(values: list[float]) -> str:
        deciles = statistics.quantiles(values, n=10)
        return f"{statistics.median(values):6.2f} ({deciles[0]:.2f}-{deciles[-1]:.2f})"

    rng = random.Random(1)
    differences = sorted(
        statistics.median(rng.choices(known, k=len(known)))
        - statistics.median(rng.choices(unknown, k=len(unknown)))
        for _ in range(2000)
    )
    low, high = differences[50], differences[1949]
    gap = statistics.median(known) - statistics.median(unknown)
    return (
        f"{name:<22} with account {spread(known)}  without {spread(unknown)}  "
        f"gap {gap:+.2f} ms [{low:+.2f}, {high:+.2f}]"
    )


def run(url: str, known_body, unknown_body) -> tuple[list[float], list[float]]:
    client = APIClient()
    for n in range(5):  # warm up both paths
        timed(client, url, known_body(n))
        timed(client, url, unknown_body(1000 + n))
    known, unknown = [], []
    for n in range(ROUNDS):
        pair = [(known, known_body), (unknown, unknown_body)]
        random.shuffle(pair)
        for times, body in pair:
            times.append(timed(client, url, body(n + 10)))
    return known, unknown


def test_registration():
    UserFactory(email="known@example.com")
    known, unknown = run(
        "/api/v1/auth/register/",
        lambda n: {"email": "known@example.com", "password": PASSWORD, "organisation_name": "x"},
        lambda n: {"email": f"new{n}@example.com", "password": PASSWORD, "organisation_name": "x"},
    )
    print("\n" + summary("register", known, unknown))


def test_password_reset():
    UserFactory(email="known@example.com")
    known, unknown = run(
        "/api/v1/auth/password-reset/",
        lambda n: {"email": "known@example.com"},
        lambda n: {"email": f"nobody{n}@example.com"},
    )
    print("\n" + summary("password-reset", known, unknown))


def test_verification_resend():
    UserFactory(email="pending@example.com", email_verified_at=None)
    known, unknown = run(
        "/api/v1/auth/verify-email/resend/",
        lambda n: {"email": "pending@example.com"},
        lambda n: {"email": f"nobody{n}@example.com"},
    )
    print("\n" + summary("verify-email/resend", known, unknown))
