"""Brute-force lockouts, API rate limits by plan, and the client IP they count against."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.core import checks
from django.test import RequestFactory, override_settings
from django.urls import include, path
from redis.exceptions import ConnectionError as RedisConnectionError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.checks import check_rate_limit_cache
from apps.accounts.models import Role
from apps.accounts.network import client_ip
from apps.accounts.tenancy import TenantPermission
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import DEFAULT_PASSWORD, ApiKeyFactory, api_key_header, bearer, member

TOKEN_URL = "/api/v1/auth/token/"
ROOT = Path(__file__).resolve().parents[2]


def login(client, email, password="wrong-password", ip="203.0.113.10", **headers):
    return client.post(
        TOKEN_URL, {"email": email, "password": password}, format="json", REMOTE_ADDR=ip, **headers
    )


def assert_throttled(response):
    assert response.status_code == 429, response.content
    retry_after = int(response["Retry-After"])
    assert retry_after >= 1
    error = response.json()["error"]
    assert error["code"] == "throttled"
    assert error["details"] == {"retry_after_seconds": retry_after}
    assert error["request_id"] == response["X-Request-ID"]


@pytest.fixture
def user(db):
    return member(Role.OWNER).user


# ---- Brute force on sign-in -------------------------------------------------------------------
def test_an_account_locks_after_five_failures_even_from_many_ips(api_client, user):
    for attempt in range(5):
        assert login(api_client, user.email, ip=f"198.51.100.{attempt}").status_code == 401

    locked = login(api_client, user.email, password=DEFAULT_PASSWORD, ip="192.0.2.200")

    assert_throttled(locked)
    assert AuditEvent.objects.filter(action=AuditAction.LOGIN_LOCKED).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.LOGIN_FAILED).count() == 5


@pytest.mark.django_db(transaction=True)
def test_parallel_guesses_get_no_more_tries_than_the_window_allows():
    """The check reads the failures counted so far; a failure is counted after the password was
    tested. Twenty guesses at once would all pass the check without one attempt at a time per
    account: here each waits in the password check until all twenty have arrived."""
    import threading

    from django.contrib.auth import authenticate as real_authenticate
    from django.db import connections
    from rest_framework.test import APIClient

    user = member(Role.OWNER).user
    arrived = threading.Barrier(20, timeout=3)
    tested: list[int] = []

    def slow_authenticate(*args, **kwargs):
        tested.append(1)
        with contextlib.suppress(threading.BrokenBarrierError):
            arrived.wait()  # broken (after 3 s) when the others were turned away
        return real_authenticate(*args, **kwargs)

    codes: list[int] = []

    def guess(n):
        try:
            codes.append(login(APIClient(), user.email, ip=f"198.51.100.{n}").status_code)
        finally:
            connections.close_all()

    with mock.patch("apps.accounts.services.auth.authenticate", side_effect=slow_authenticate):
        threads = [threading.Thread(target=guess, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert len(codes) == 20
    assert len(tested) == codes.count(401) == 1  # one password tested; the rest turned away
    assert codes.count(429) == 19


@pytest.mark.django_db(transaction=True)
def test_no_password_is_tested_after_another_attempt_used_the_last_try():
    """The failures are read holding the account's slot: an attempt finishing between another's
    check and its password test could otherwise let one try too many through."""
    from apps.accounts import ratelimit
    from apps.accounts.network import RequestMeta
    from apps.accounts.services import auth as auth_services

    user = member(Role.OWNER).user
    limit = int(settings.LOGIN_RATE_PER_ACCOUNT.split("/")[0])
    for n in range(limit - 1):
        with contextlib.suppress(Exception):
            auth_services.auth_login(
                email=user.email, password="wrong", meta=RequestMeta(ip=f"198.51.100.{n + 10}")
            )
    tested: list[int] = []
    real_authenticate, real_check = auth_services.authenticate, ratelimit.guard_check
    interleaved: list[BaseException] = []

    def counting_authenticate(*args, **kwargs):
        tested.append(1)
        return real_authenticate(*args, **kwargs)

    def check_then_another_attempt(**kwargs):
        real_check(**kwargs)
        if not interleaved:  # another attempt, meant to use the last try, runs now
            try:
                auth_services.auth_login(
                    email=user.email, password="wrong2", meta=RequestMeta(ip="198.51.100.99")
                )
            except Exception as exc:
                interleaved.append(exc)

    with (
        mock.patch.object(auth_services, "authenticate", side_effect=counting_authenticate),
        mock.patch.object(ratelimit, "guard_check", side_effect=check_then_another_attempt),
        contextlib.suppress(Exception),
    ):
        auth_services.auth_login(
            email=user.email, password="wrong3", meta=RequestMeta(ip="198.51.100.1")
        )

    assert len(tested) == 1  # the other attempt was turned away: one at a time per account
    assert interleaved and interleaved[0].__class__.__name__ == "Throttled"


def test_a_failed_sign_in_keeps_the_typed_address_only_if_it_is_one(api_client, user):
    """A password typed into the address field must not stay in the append-only trail."""
    login(api_client, user.email)
    login(api_client, "Tr0ub4dor&3-my-password")

    kept = list(
        AuditEvent.objects.filter(action=AuditAction.LOGIN_FAILED)
        .order_by("occurred_at")
        .values_list("target_repr", flat=True)
    )

    assert kept == [user.email, "(not an email address)"]


def test_the_account_lock_does_not_depend_on_the_spelling_of_the_address(api_client, user):
    for spelling in [user.email, user.email.upper(), f"  {user.email}", user.email.title()] * 2:
        login(api_client, spelling, ip="198.51.100.1")

    assert_throttled(login(api_client, user.email, password=DEFAULT_PASSWORD))


@pytest.mark.django_db
def test_an_ip_locks_after_twenty_failures_across_accounts(api_client, user):
    for n in range(20):
        assert login(api_client, f"victim{n}@example.com").status_code == 401

    locked = login(api_client, user.email, password=DEFAULT_PASSWORD)

    assert_throttled(locked)
    assert (
        login(api_client, user.email, password=DEFAULT_PASSWORD, ip="192.0.2.9").status_code == 200
    )


@pytest.mark.django_db
def test_a_spoofed_x_forwarded_for_does_not_reset_the_ip_counter(api_client, user):
    for n in range(20):
        login(api_client, f"victim{n}@example.com", HTTP_X_FORWARDED_FOR=f"10.9.8.{n}")

    locked = login(
        api_client, user.email, password=DEFAULT_PASSWORD, HTTP_X_FORWARDED_FOR="10.1.1.1"
    )

    assert_throttled(locked)


@override_settings(TRUSTED_PROXIES=["10.0.0.0/8"])
@pytest.mark.django_db
def test_behind_a_trusted_proxy_clients_are_counted_by_their_forwarded_address(api_client, user):
    for n in range(20):
        login(
            api_client,
            f"victim{n}@example.com",
            ip="10.0.0.2",
            HTTP_X_FORWARDED_FOR=f"6.6.6.{n}, 203.0.113.50",
        )

    same_client = login(
        api_client, user.email, DEFAULT_PASSWORD, ip="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.50"
    )
    other_client = login(
        api_client, user.email, DEFAULT_PASSWORD, ip="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.51"
    )

    assert_throttled(same_client)
    assert other_client.status_code == 200


@pytest.mark.django_db
def test_lockout_answers_do_not_reveal_whether_the_account_exists(api_client, user):
    for _ in range(5):
        login(api_client, user.email, ip="198.51.100.1")
        login(api_client, "ghost@example.com", ip="198.51.100.2")

    real = login(api_client, user.email, ip="198.51.100.3")
    ghost = login(api_client, "ghost@example.com", ip="198.51.100.4")

    assert real.status_code == ghost.status_code == 429
    assert real.json()["error"]["code"] == ghost.json()["error"]["code"] == "throttled"


def test_wrong_current_passwords_count_towards_the_account_lock(api_client, user):
    headers = bearer(user)
    for _ in range(5):
        api_client.post(
            "/api/v1/me/password/",
            {"current_password": "wrong", "new_password": "Whatever-Long-Pass-1"},
            format="json",
            **headers,
        )

    assert_throttled(login(api_client, user.email, password=DEFAULT_PASSWORD))


# ---- Requests that email an address: password reset, registration, verification link ---------
def reset(client, email, ip="192.0.2.77"):
    return client.post(
        "/api/v1/auth/password-reset/", {"email": email}, format="json", REMOTE_ADDR=ip
    )


def test_password_reset_emails_stop_at_the_address_limit_with_the_same_answer(
    api_client, user, send_emails, mailoutbox
):
    with send_emails():
        answers = [reset(api_client, user.email, ip=f"198.51.100.{n}") for n in range(4)]

    assert [a.status_code for a in answers] == [202] * 4
    assert answers[3].json() == answers[0].json()
    assert len(mailoutbox) == 3  # the fourth is not sent, and nobody is told
    requested = AuditEvent.objects.filter(action=AuditAction.PASSWORD_RESET_REQUESTED)
    assert requested.count() == 3


REGISTRATION = {"password": "Another-long-passphrase-1", "organisation_name": "x"}


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("/api/v1/auth/register/", REGISTRATION),
        ("/api/v1/auth/verify-email/resend/", {}),
    ],
    ids=["registration", "verification-resend"],
)
def test_other_requests_for_an_address_leave_its_password_resets_alone(
    api_client, user, send_emails, mailoutbox, url, extra
):
    """Anyone may register an address or ask for its verification link: that must not use up
    the resets its owner needs (they shared one counter)."""
    for n in range(5):
        response = api_client.post(
            url, {"email": user.email, **extra}, format="json", REMOTE_ADDR=f"198.51.100.{n}"
        )
        assert response.status_code == 202

    with send_emails():
        response = reset(api_client, user.email)

    assert response.status_code == 202
    assert [m.subject for m in mailoutbox][-1] == "Reset your LexisCore password"


def test_account_exists_notices_stop_at_the_address_limit(
    api_client, user, send_emails, mailoutbox
):
    with send_emails():
        answers = [
            api_client.post(
                "/api/v1/auth/register/",
                {"email": user.email, **REGISTRATION},
                format="json",
                REMOTE_ADDR=f"198.51.100.{n}",
            )
            for n in range(5)
        ]

    assert [a.status_code for a in answers] == [202] * 5
    assert [m.subject for m in mailoutbox] == ["Your LexisCore account"] * 3


def test_verification_links_stop_at_the_address_limit(api_client, db, send_emails, mailoutbox):
    pending = member(Role.OWNER, email_verified_at=None).user

    with send_emails():
        answers = [
            api_client.post(
                "/api/v1/auth/verify-email/resend/",
                {"email": pending.email},
                format="json",
                REMOTE_ADDR=f"198.51.100.{n}",
            )
            for n in range(5)
        ]

    assert [a.status_code for a in answers] == [202] * 5
    assert len(mailoutbox) == 3


@pytest.mark.django_db
def test_password_reset_requests_are_limited_per_ip(api_client):
    for n in range(20):
        api_client.post(
            "/api/v1/auth/password-reset/",
            {"email": f"someone{n}@example.com"},
            format="json",
            HTTP_X_FORWARDED_FOR=f"10.0.0.{n}",
        )

    assert_throttled(
        api_client.post(
            "/api/v1/auth/password-reset/", {"email": "fresh@example.com"}, format="json"
        )
    )


def test_sign_in_fails_closed_when_the_counters_are_unreachable(api_client, user):
    with mock.patch("apps.accounts.ratelimit.get_usage", side_effect=RedisConnectionError):
        response = login(api_client, user.email, password=DEFAULT_PASSWORD)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "rate_limit_unavailable"


# ---- General API rates ------------------------------------------------------------------------
PLANS = {
    "free": {"api": "3/m", "uploads": "2/h"},
    "team": {"api": "6/m", "uploads": "4/h"},
}


@override_settings(PLAN_RATE_LIMITS=PLANS)
def test_users_are_limited_at_their_organisations_plan_rate(api_client, db):
    free = member(Role.MEMBER)
    team = member(Role.MEMBER)
    team.organisation.plan = "team"
    team.organisation.save()

    free_codes = [
        api_client.get("/api/v1/members/", **bearer(free.user)).status_code for _ in range(4)
    ]
    team_codes = [
        api_client.get("/api/v1/members/", **bearer(team.user)).status_code for _ in range(7)
    ]

    assert free_codes == [200, 200, 200, 429]
    assert team_codes == [200] * 6 + [429]
    assert_throttled(api_client.get("/api/v1/members/", **bearer(free.user)))


@override_settings(PLAN_RATE_LIMITS=PLANS)
def test_each_api_key_has_its_own_window(api_client, db):
    organisation = member(Role.OWNER).organisation
    first, second = (
        ApiKeyFactory(organisation=organisation),
        ApiKeyFactory(organisation=organisation),
    )

    for _ in range(3):
        assert api_client.get("/api/v1/members/", **api_key_header(first)).status_code == 200

    assert_throttled(api_client.get("/api/v1/members/", **api_key_header(first)))
    assert api_client.get("/api/v1/members/", **api_key_header(second)).status_code == 200


@override_settings(RATE_LIMIT_ANON="2/m")
@pytest.mark.django_db
def test_anonymous_callers_are_limited_per_ip(api_client):
    def call(ip: str, spoof: str = ""):
        return api_client.post(
            "/api/v1/auth/verify-email/",
            {"token": "x"},
            format="json",
            REMOTE_ADDR=ip,
            HTTP_X_FORWARDED_FOR=spoof,
        )

    codes = [call("198.51.100.1", spoof=f"1.1.1.{n}").status_code for n in range(3)]

    assert codes == [400, 400, 429]
    assert_throttled(call("198.51.100.1"))
    assert call("198.51.100.2").status_code == 400


@override_settings(PLAN_RATE_LIMITS=PLANS, RATE_LIMIT_ENABLED=False)
def test_rate_limits_can_be_switched_off_for_load_tests(api_client, db):
    user = member(Role.MEMBER).user

    codes = {api_client.get("/api/v1/members/", **bearer(user)).status_code for _ in range(5)}

    assert codes == {200}


class UploadApi(APIView):
    permission_classes = [IsAuthenticated, TenantPermission]
    throttle_scope = "uploads"

    def post(self, request, version):
        return Response({"ok": True})


urlpatterns = [
    path("api/<version>/test-upload/", UploadApi.as_view()),
    path("api/<version>/", include("apps.accounts.api.urls")),
]


@override_settings(
    ROOT_URLCONF=__name__, PLAN_RATE_LIMITS={**PLANS, "free": {"api": "100/m", "uploads": "2/h"}}
)
def test_the_uploads_scope_is_a_stricter_window_of_its_own(api_client, db):
    user = member(Role.MEMBER).user

    uploads = [
        api_client.post("/api/v1/test-upload/", **bearer(user)).status_code for _ in range(3)
    ]
    reads = api_client.get("/api/v1/members/", **bearer(user))

    assert uploads == [200, 200, 429]
    assert reads.status_code == 200


def test_the_general_rate_fails_open_when_the_counters_are_unreachable(api_client, db, settings):
    # All through the `settings` fixture: mixed with an override_settings decorator, its
    # restore would bring back the decorator's values after the test.
    settings.PLAN_RATE_LIMITS = PLANS  # 3 calls a minute: five answered means it failed open
    user = member(Role.MEMBER).user
    settings.CACHES = {
        **settings.CACHES,
        # Nothing listens on port 1: every counter operation fails to connect.
        "counters-down": {
            "BACKEND": "apps.core.cache.InstrumentedRedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        },
    }
    settings.RATELIMIT_USE_CACHE = "counters-down"

    codes = {api_client.get("/api/v1/members/", **bearer(user)).status_code for _ in range(5)}

    assert codes == {200}


def test_an_api_call_counts_in_one_redis_round_trip(api_client, db):
    from redis.client import Pipeline

    user = member(Role.MEMBER).user
    headers = bearer(user)
    api_client.get("/api/v1/members/", **headers)

    with (
        mock.patch.object(Pipeline, "execute", autospec=True, side_effect=Pipeline.execute) as run,
        # django-ratelimit's add() then incr() (two round trips) is not used for counting.
        mock.patch("apps.accounts.ratelimit.get_usage", side_effect=AssertionError),
    ):
        assert api_client.get("/api/v1/members/", **headers).status_code == 200

    assert run.call_count == 1  # SET NX and INCR sent together


# ---- Where the counters live and whom they count ----------------------------------------------
def test_failures_counted_by_another_process_lock_the_account_here():
    from rest_framework.exceptions import Throttled

    from apps.accounts.ratelimit import guard_check, guard_hit

    for _ in range(3):
        guard_hit(guard="login", account="shared@example.com", ip="203.0.113.1")
    code = (
        "import django; django.setup();"
        "from apps.accounts.ratelimit import guard_hit;"
        "[guard_hit(guard='login', account='shared@example.com', ip='203.0.113.2')"
        " for _ in range(2)]"
    )

    other_process = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=os.environ.copy(), timeout=60, check=False
    )

    assert other_process.returncode == 0
    with pytest.raises(Throttled):
        guard_check(guard="login", account="shared@example.com", ip="203.0.113.3")


def test_counters_live_in_redis_shared_by_every_process():
    backend = settings.CACHES[settings.RATELIMIT_USE_CACHE]["BACKEND"]

    assert backend == "apps.core.cache.InstrumentedRedisCache"  # Django's RedisCache + counters
    assert check_rate_limit_cache(None) == []


@override_settings(
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}, DEBUG=False
)
def test_a_per_process_cache_is_flagged_by_a_system_check():
    messages = check_rate_limit_cache(None)

    assert [m.id for m in messages] == ["accounts.W001"]
    assert messages[0].level == checks.WARNING


def test_ipv6_clients_are_counted_per_64_prefix():
    from apps.accounts.ratelimit import ip_key

    assert ip_key("2001:db8:1:2::1") == ip_key("2001:db8:1:2:ffff::9") == "ip:2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("203.0.113.5") == "ip:203.0.113.5"


def test_ipv4_mapped_clients_are_counted_as_their_ipv4_address():
    """Behind a dual-stack listener every IPv4 client is "::ffff:a.b.c.d": one /64 for them all
    would let one client lock every other out of signing in."""
    from apps.accounts.ratelimit import ip_key

    assert ip_key("::ffff:203.0.113.5") == "ip:203.0.113.5"
    assert ip_key("::ffff:203.0.113.5") != ip_key("::ffff:198.51.100.7")


@pytest.mark.parametrize(
    ("remote", "forwarded", "proxies", "count", "expected"),
    [
        ("203.0.113.5", "", [], 0, "203.0.113.5"),
        ("203.0.113.5", "1.2.3.4", [], 0, "203.0.113.5"),
        ("10.0.0.2", "1.2.3.4, 198.51.100.9", ["10.0.0.0/8"], 0, "198.51.100.9"),
        ("10.0.0.2", "198.51.100.9, 10.0.0.7", ["10.0.0.0/8"], 0, "198.51.100.9"),
        ("203.0.113.5", "1.2.3.4", ["10.0.0.0/8"], 0, "203.0.113.5"),
        ("10.0.0.2", "not-an-ip", ["10.0.0.0/8"], 0, "10.0.0.2"),
        ("10.0.0.2", "spoof, 198.51.100.9", [], 1, "198.51.100.9"),
        ("10.0.0.2", "198.51.100.9, 10.0.0.3", [], 2, "198.51.100.9"),
        ("10.0.0.2", "", [], 1, "10.0.0.2"),
        ("2001:db8::1", "", [], 0, "2001:db8::1"),
        ("::ffff:203.0.113.5", "", [], 0, "203.0.113.5"),
        ("10.0.0.2", "::ffff:198.51.100.9", ["10.0.0.0/8"], 0, "198.51.100.9"),
        ("", "", [], 0, "0.0.0.0"),
    ],
)
def test_the_client_ip_trusts_forwarded_headers_only_from_configured_proxies(
    remote, forwarded, proxies, count, expected
):
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)

    with override_settings(TRUSTED_PROXIES=proxies, TRUSTED_PROXY_COUNT=count):
        assert client_ip(request) == expected
