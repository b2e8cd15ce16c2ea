"""Failed authentications per client IP (RATE_LIMIT_AUTH_FAILURES): DRF authenticates before
any throttle runs, so without this a made-up API key or token got its 401, and its lookup, however
often it was sent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework_simplejwt.tokens import AccessToken

from apps.accounts import authentication
from apps.accounts.models import Role
from apps.accounts.tokens import VERSION_CLAIM
from apps.feed.tickets import ticket_issue
from tests.factories import ApiKeyFactory, api_key_header, bearer, member

pytestmark = pytest.mark.django_db

BOGUS_KEY = "lxk_0123456789ab_" + "A" * 40
URL = "/api/v1/events"


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.RATE_LIMIT_ENABLED = True
    settings.RATE_LIMIT_AUTH_FAILURES = "5/m"
    settings.RATE_LIMIT_ANON = "1000/m"
    authentication.over_the_limit.clear()
    authentication.known_keys.clear()
    yield
    authentication.over_the_limit.clear()
    authentication.known_keys.clear()


def get(api_client, ip: str, **headers):
    return api_client.get(URL, REMOTE_ADDR=ip, **headers)


def test_past_the_limit_a_bad_api_key_gets_429_before_any_lookup(api_client):
    codes = [get(api_client, "203.0.113.7", HTTP_X_API_KEY=BOGUS_KEY).status_code for _ in range(5)]
    with CaptureQueriesContext(connection) as queries:
        refused = [get(api_client, "203.0.113.7", HTTP_X_API_KEY=BOGUS_KEY) for _ in range(10)]

    assert codes == [401] * 5
    assert {r.status_code for r in refused} == {429}
    assert len(queries) == 0  # the key was never looked up
    body = refused[-1].json()["error"]
    assert body["code"] == "throttled"
    assert "failed authentications" in body["message"]
    assert int(refused[-1]["Retry-After"]) >= 1
    assert body["details"]["retry_after_seconds"] >= 1


def test_other_addresses_and_their_valid_credentials_are_not_affected(api_client):
    owner = member(Role.OWNER)
    key = ApiKeyFactory(organisation=owner.organisation)
    for _ in range(8):
        get(api_client, "203.0.113.7", HTTP_X_API_KEY=BOGUS_KEY)

    assert get(api_client, "198.51.100.1", **api_key_header(key)).status_code == 200
    assert get(api_client, "198.51.100.1", **bearer(owner.user)).status_code == 200
    # A bad credential from the other address is still a plain 401.
    assert get(api_client, "198.51.100.1", HTTP_X_API_KEY=BOGUS_KEY).status_code == 401


def test_the_counted_address_is_the_proxy_aware_client_ip(api_client, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]

    def via_proxy(client_address: str):
        return api_client.get(
            URL,
            REMOTE_ADDR="10.0.0.2",
            HTTP_X_FORWARDED_FOR=client_address,
            HTTP_X_API_KEY=BOGUS_KEY,
        ).status_code

    codes = [via_proxy("203.0.113.7") for _ in range(6)]

    assert codes == [401] * 5 + [429]
    assert via_proxy("203.0.113.8") == 401  # another client behind the same proxy


def test_bad_tokens_count_but_validly_signed_ones_do_not(api_client):
    """Expired and revoked tokens were issued here (their signature checks out): no guess."""
    owner = member(Role.OWNER)
    expired = AccessToken.for_user(owner.user)
    expired[VERSION_CLAIM] = owner.user.token_version
    expired.set_exp(lifetime=-timedelta(hours=1))
    stale = {"HTTP_AUTHORIZATION": f"Bearer {expired}"}
    revoked = bearer(owner.user)
    owner.user.token_version += 1  # signed out everywhere
    owner.user.save(update_fields=["token_version"])

    expired_codes = [get(api_client, "203.0.113.9", **stale).status_code for _ in range(10)]
    revoked_codes = [get(api_client, "203.0.113.9", **revoked).status_code for _ in range(10)]
    bad_codes = [
        get(api_client, "203.0.113.9", HTTP_AUTHORIZATION="Bearer not.a.token").status_code
        for _ in range(6)
    ]

    assert expired_codes == revoked_codes == [401] * 10
    assert bad_codes == [401] * 5 + [429]
    # Over the limit, a validly signed token still gets its own answer (its 401), a forged one
    # is refused before anything is looked up.
    assert get(api_client, "203.0.113.9", **stale).status_code == 401
    assert get(api_client, "203.0.113.9", HTTP_AUTHORIZATION="Bearer x.y.z").status_code == 429


def test_one_client_sending_bad_credentials_does_not_lock_out_the_others_behind_its_address(
    api_client,
):
    """A shared address (an office's NAT): the limit stops the guesses, not the valid tokens,
    the API keys this process saw authenticate, or valid stream tickets."""
    owner = member(Role.OWNER)
    key, unseen = (ApiKeyFactory(organisation=owner.organisation) for _ in range(2))
    shared = "203.0.113.20"
    assert get(api_client, shared, **api_key_header(key)).status_code == 200
    ticket = ticket_issue(user=owner.user, organisation_id=owner.organisation.pk)
    for _ in range(8):
        get(api_client, shared, HTTP_X_API_KEY=BOGUS_KEY)

    assert get(api_client, shared, HTTP_X_API_KEY=BOGUS_KEY).status_code == 429
    assert get(api_client, shared, **bearer(owner.user)).status_code == 200
    assert get(api_client, shared, **api_key_header(key)).status_code == 200
    stream = api_client.get("/api/v1/events", {"ticket": ticket}, REMOTE_ADDR=shared)
    assert stream.status_code != 429
    # A key that has not authenticated lately cannot be told from a guess without a lookup.
    assert get(api_client, shared, **api_key_header(unseen)).status_code == 429


def test_a_key_known_to_another_web_process_is_let_through_too(api_client):
    """Known keys are shared in the cache: another gunicorn worker, or one started since (a
    deploy), lets a key through that authenticated in a process it does not share memory with."""
    owner = member(Role.OWNER)
    key = ApiKeyFactory(organisation=owner.organisation)
    shared = "203.0.113.22"
    assert get(api_client, "198.51.100.9", **api_key_header(key)).status_code == 200
    for _ in range(8):
        get(api_client, shared, HTTP_X_API_KEY=BOGUS_KEY)
    authentication.known_keys.clear()  # as in another web process

    assert get(api_client, shared, **api_key_header(key)).status_code == 200


def test_a_revoked_api_key_is_no_guess_and_is_forgotten(api_client):
    owner = member(Role.OWNER)
    key = ApiKeyFactory(organisation=owner.organisation)
    headers = api_key_header(key)
    assert get(api_client, "203.0.113.21", **headers).status_code == 200
    key.revoked_at = key.created_at
    key.save(update_fields=["revoked_at"])

    codes = [get(api_client, "203.0.113.21", **headers).status_code for _ in range(8)]

    assert codes == [401] * 8  # counted as no guess: never 429
    # No longer let through a blocked address, in this process or any other.
    assert len(authentication.known_keys) == 0
    digest = authentication.sha256_hex(headers["HTTP_AUTHORIZATION"].split()[1])
    assert not authentication._key_known(digest)


def test_a_bad_stream_ticket_counts_too(api_client):
    owner = member(Role.OWNER)
    good = ticket_issue(user=owner.user, organisation_id=owner.organisation.pk)
    codes = [
        api_client.get(
            "/api/v1/events/stream", {"ticket": good[:-3] + "xyz"}, REMOTE_ADDR="203.0.113.10"
        ).status_code
        for _ in range(6)
    ]

    assert codes == [401] * 5 + [429]


def test_a_process_that_had_not_seen_the_address_answers_429_at_its_first_failure(api_client):
    for _ in range(5):
        get(api_client, "203.0.113.11", HTTP_X_API_KEY=BOGUS_KEY)
    authentication.over_the_limit.clear()  # as another web process would be

    assert get(api_client, "203.0.113.11", HTTP_X_API_KEY=BOGUS_KEY).status_code == 429
    with CaptureQueriesContext(connection) as queries:
        assert get(api_client, "203.0.113.11", HTTP_X_API_KEY=BOGUS_KEY).status_code == 429
    assert len(queries) == 0


def test_the_limit_is_configurable_and_can_be_turned_off(api_client, settings):
    settings.RATE_LIMIT_AUTH_FAILURES = "2/m"
    assert [
        get(api_client, "203.0.113.12", HTTP_X_API_KEY=BOGUS_KEY).status_code for _ in range(3)
    ] == [401, 401, 429]

    settings.RATE_LIMIT_AUTH_FAILURES = ""
    assert {
        get(api_client, "203.0.113.13", HTTP_X_API_KEY=BOGUS_KEY).status_code for _ in range(8)
    } == {401}

    settings.RATE_LIMIT_AUTH_FAILURES = "2/m"
    settings.RATE_LIMIT_ENABLED = False
    assert {
        get(api_client, "203.0.113.14", HTTP_X_API_KEY=BOGUS_KEY).status_code for _ in range(8)
    } == {401}


def test_without_the_shared_cache_it_fails_open(api_client, monkeypatch):
    monkeypatch.setattr(authentication, "_usage", lambda *args, **kwargs: None)

    codes = {
        get(api_client, "203.0.113.15", HTTP_X_API_KEY=BOGUS_KEY).status_code for _ in range(8)
    }

    assert codes == {401}


def test_a_new_window_frees_an_address_this_process_remembers(api_client):
    for _ in range(6):
        get(api_client, "203.0.113.16", HTTP_X_API_KEY=BOGUS_KEY)
    owner = member(Role.OWNER)
    key = ApiKeyFactory(organisation=owner.organisation)
    assert get(api_client, "203.0.113.16", **api_key_header(key)).status_code == 429

    from tests.conftest import clear_test_cache

    clear_test_cache()  # the window ended (the counter is gone)

    assert get(api_client, "203.0.113.16", **api_key_header(key)).status_code == 200
