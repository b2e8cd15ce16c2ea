"""Rate limits shared by every web process through the Django cache (Redis).

Counting is django-ratelimit's fixed-window counter (`cache.add` + atomic `incr`), so replicas
share one count per key and window. Two layers:

* DRF throttles (`ApiRateThrottle`, `ScopedRateThrottle`) for every API call: per user, per API
  key, or per client IP for anonymous calls, at the rate of the organisation's plan
  (`PLAN_RATE_LIMITS`). A view opts into a stricter scope with `throttle_scope = "uploads"`.
* Brute-force guards for credentials (`login`): per account and per client IP, checked before
  the password is, so a locked account answers 429 even to the right password.
* Guards of the requests that email an address (`registration`, `verification_resend`,
  `password_reset`), each with counters of its own: over the per-IP limit the client gets 429;
  over the per-address limit the email is silently not sent (`guard_email_request`).
* Invitation emails per address, across organisations (`guard_invitation_address`): the
  inviter is a signed-in admin of a known organisation, so past the limit they get 429.

Over a limit the caller gets 429 with `Retry-After` and the error body.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpRequest
from django_ratelimit import ALL
from django_ratelimit.core import (
    EXPIRATION_FUDGE,
    _get_window,
    _make_cache_key,
    _split_rate,
    get_usage,
)
from redis.exceptions import RedisError
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from .network import client_ip

logger = logging.getLogger(__name__)


def ip_key(ip: str | None) -> str:
    """The counter key of an address: IPv6 clients count per /64 (one subscriber's prefix)."""
    if not ip:
        return "ip:unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"ip:{ip}"
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # one IPv4 client, not the /64 every such client shares
    if address.version == 6:
        return f"ip:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"ip:{address}"


def _key(value: str) -> Callable[[str, Any], str]:
    return lambda _group, _request: value


def _usage(
    request: HttpRequest | None, *, group: str, key: str, rate: str, increment: bool
) -> dict[str, Any] | None:
    """django-ratelimit's usage, or None when the shared store cannot be reached."""
    try:
        store = caches[settings.RATELIMIT_USE_CACHE]
        if increment and isinstance(store, RedisCache):
            return _count_in_one_round_trip(store, group=group, key=key, rate=rate)
        return get_usage(request, group=group, key=_key(key), rate=rate, increment=increment)
    except (RedisError, ConnectionError, TimeoutError, OSError):
        logger.warning("Rate-limit store unreachable for %s", group, exc_info=True)
        return None


def _count_in_one_round_trip(
    store: RedisCache, *, group: str, key: str, rate: str
) -> dict[str, Any]:
    """django-ratelimit's counting (same key, window and result) in one Redis round trip.

    `get_usage` adds the counter then increments it: two round trips on every API call. Here a
    pipeline sends both (`SET key 0 EX ttl NX`, then `INCR key`) at once; the counter is the
    same Redis integer `cache.incr` maintains, so `get_usage` reads it unchanged.
    """
    limit, period = _split_rate(rate)
    window = _get_window(key, period)
    redis_key = store.make_and_validate_key(_make_cache_key(group, window, rate, key, ALL))
    client = store._cache.get_client(redis_key, write=True)
    pipe = client.pipeline(transaction=False)
    pipe.set(redis_key, 0, ex=period + EXPIRATION_FUDGE, nx=True)
    pipe.incr(redis_key)
    _added, count = pipe.execute()
    return {
        "count": count,
        "limit": limit,
        "should_limit": count > limit,
        "time_left": window - int(time.time()),
    }


def _retry_after(usage: dict[str, Any]) -> int:
    return max(int(usage.get("time_left") or 0), 1)


# ---- API throttles ----------------------------------------------------------------------------
def plan_rate(plan: str | None, scope: str) -> str | None:
    plans = settings.PLAN_RATE_LIMITS
    rates = plans.get(plan or "") or plans.get(settings.RATE_LIMIT_DEFAULT_PLAN) or {}
    rate = rates.get(scope)
    if rate is None:
        rate = (plans.get(settings.RATE_LIMIT_DEFAULT_PLAN) or {}).get(scope)
    return rate


def caller_identity(request: Request) -> tuple[str, str | None]:
    """(counter key, plan) of the caller: an API key, a user, or an anonymous IP."""
    from .authentication import ApiKeyPrincipal
    from .tenancy import cached_tenant

    user = getattr(request, "user", None)
    if isinstance(user, ApiKeyPrincipal):
        return f"key:{user.api_key.pk}", user.api_key.organisation.plan
    if user is not None and user.is_authenticated:
        tenant = cached_tenant(request)
        return f"user:{user.pk}", tenant.organisation.plan if tenant else None
    return ip_key(client_ip(request)), None


class ApiRateThrottle(BaseThrottle):
    """The general API rate: every call counts once in its caller's `api` window."""

    scope = "api"

    def __init__(self) -> None:
        self._wait = 1

    def get_scope(self, view: Any) -> str | None:
        return self.scope

    def allow_request(self, request: Request, view: Any) -> bool:
        if not settings.RATE_LIMIT_ENABLED:
            return True
        scope = self.get_scope(view)
        if not scope:
            return True
        identity, plan = caller_identity(request)
        if identity.startswith("ip:"):
            rate = settings.RATE_LIMIT_ANON if scope == "api" else plan_rate(None, scope)
        else:
            rate = plan_rate(plan, scope)
        if not rate:
            return True
        usage = _usage(request, group=f"throttle:{scope}", key=identity, rate=rate, increment=True)
        if usage is None:  # availability over strictness for the general rate
            return True
        if usage["should_limit"]:
            self._wait = _retry_after(usage)
            return False
        return True

    def wait(self) -> float:
        return self._wait


class PlanScopedRateThrottle(ApiRateThrottle):
    """An extra, stricter window for views that name one (`throttle_scope = "uploads"`)."""

    def get_scope(self, view: Any) -> str | None:
        scope = getattr(view, "throttle_scope", None)
        return scope if scope and scope != "api" else None


# ---- Brute-force guards -----------------------------------------------------------------------
GUARDS: dict[str, tuple[str, str]] = {
    # guard: (per-account rate setting, per-IP rate setting)
    "login": ("LOGIN_RATE_PER_ACCOUNT", "LOGIN_RATE_PER_IP"),
    "password_reset": ("PASSWORD_RESET_RATE_PER_ACCOUNT", "PASSWORD_RESET_RATE_PER_IP"),
    # Counted apart from the resets, at the same rates: registering an address, or asking for its
    # verification link, must never use up the resets its owner may need.
    "registration": ("PASSWORD_RESET_RATE_PER_ACCOUNT", "PASSWORD_RESET_RATE_PER_IP"),
    "verification_resend": ("PASSWORD_RESET_RATE_PER_ACCOUNT", "PASSWORD_RESET_RATE_PER_IP"),
}


def _guard_counters(guard: str, account: str, ip: str | None) -> list[tuple[str, str, str]]:
    account_setting, ip_setting = GUARDS[guard]
    return [
        (f"guard:{guard}:account", f"account:{account}", getattr(settings, account_setting)),
        (f"guard:{guard}:ip", ip_key(ip), getattr(settings, ip_setting)),
    ]


def guard_check(*, guard: str, account: str, ip: str | None) -> None:
    """Raise 429 if the account or the client IP has used up its attempts for this window."""
    # Imported here: DRF imports this module while apps.core.exceptions is still importing DRF.
    from apps.core.exceptions import ServiceUnavailableError

    for group, key, rate in _guard_counters(guard, account, ip):
        usage = _usage(None, group=group, key=key, rate=rate, increment=False)
        if usage is None:  # never let credentials be guessed while the counters are down
            raise ServiceUnavailableError(
                "This is temporarily unavailable. Try again shortly.",
                code="rate_limit_unavailable",
            )
        if usage["count"] >= usage["limit"]:
            raise Throttled(wait=_retry_after(usage))


# How long one attempt may hold its account's slot (a password hash takes a fraction of a second;
# the slot is freed at once when the attempt ends, this only bounds a crashed one).
ATTEMPT_SLOT_SECONDS = 10


@contextmanager
def guard_attempt(*, guard: str, account: str, ip: str | None) -> Iterator[None]:
    """One attempt at a time per account until the block ends, then `guard_check`.

    The check reads the failures counted so far and a failure is counted only after the password
    was tested: without this, a burst of parallel guesses would all pass the check before the first
    failure is counted, and get far more tries than the window allows. A second attempt while one
    runs is answered 429 (retry in a second).
    """
    from apps.core.exceptions import ServiceUnavailableError

    store = caches[settings.RATELIMIT_USE_CACHE]
    # Hashed: an address may hold characters a cache key must not.
    slot = f"guard:{guard}:attempt:{hashlib.sha256(account.encode()).hexdigest()}"
    try:
        taken = store.add(slot, 1, timeout=ATTEMPT_SLOT_SECONDS)
    except (RedisError, ConnectionError, TimeoutError, OSError):
        logger.warning("Rate-limit store unreachable for the %s guard", guard, exc_info=True)
        raise ServiceUnavailableError(
            "This is temporarily unavailable. Try again shortly.",
            code="rate_limit_unavailable",
        ) from None
    if not taken:
        raise Throttled(wait=1)
    try:
        # Checked holding the slot: no other attempt of this account can count a failure between
        # the check and this attempt's password test.
        guard_check(guard=guard, account=account, ip=ip)
        yield
    finally:
        try:
            store.delete(slot)
        except (RedisError, ConnectionError, TimeoutError, OSError):
            logger.warning("Could not free the %s guard's slot of an account", guard)


def guard_hit(*, guard: str, account: str, ip: str | None) -> list[str]:
    """Count one attempt (a failed login, a reset request) against the account and the IP.

    Returns the counters ("account", "ip") that this attempt used up, so that the moment of
    lockout can be recorded once rather than on every refused attempt.
    """
    exhausted = []
    for group, key, rate in _guard_counters(guard, account, ip):
        usage = _usage(None, group=group, key=key, rate=rate, increment=True)
        if usage is not None and usage["count"] == usage["limit"]:
            exhausted.append(group.rsplit(":", 1)[1])
    return exhausted


def guard_email_request(*, guard: str, account: str, ip: str | None) -> bool:
    """Count a request that emails `account` (registration, verification link, password reset);
    return whether the email may be sent.

    Over the client IP's limit the request is refused (429): that tells the client nothing about
    the address. Over the address's limit it returns False and the caller answers exactly as
    usual, sending nothing. The per-address counter only keeps one mailbox from being flooded: a
    429 would show whoever used it up that they did (anyone can use up an address's counter from
    many IPs), and tell its owner nothing they could act on.
    """
    from apps.core.exceptions import ServiceUnavailableError

    usages = []
    for group, key, rate in _guard_counters(guard, account, ip):
        usage = _usage(None, group=group, key=key, rate=rate, increment=False)
        if usage is None:  # fail closed, as for credentials: these requests send email
            raise ServiceUnavailableError(
                "This is temporarily unavailable. Try again shortly.",
                code="rate_limit_unavailable",
            )
        usages.append(usage)
    account_usage, ip_usage = usages
    if ip_usage["count"] >= ip_usage["limit"]:
        raise Throttled(wait=_retry_after(ip_usage))
    guard_hit(guard=guard, account=account, ip=ip)
    if account_usage["count"] >= account_usage["limit"]:
        logger.info("An address's %s limit is used up; its email is not sent", guard)
        return False
    return True


GMAIL_DOMAINS = {"gmail.com", "googlemail.com"}


def mailbox(address: str) -> str:
    """The inbox an address reaches, for counting: lower case, without a `+tag` (most providers
    deliver `victim+1@`, `victim+2@` ... to `victim@`, so tags must not multiply a limit), and
    for Gmail without dots and on one domain (`v.ictim@googlemail.com` is `victim@gmail.com`)."""
    local, _, domain = address.strip().lower().rpartition("@")
    if not local:
        return address.strip().lower()
    local = local.split("+", 1)[0] or local
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", "") or local, "gmail.com"
    return f"{local}@{domain}"


def guard_invitation_address(*, address: str, enforce: bool = True) -> None:
    """Count one invitation email to `address`, whichever organisation sends it; past
    `INVITATION_RATE_PER_ADDRESS` raise 429 `invitation_address_limit` (with Retry-After).

    Counted before the email is queued, with one atomic increment, so parallel invitations from
    many organisations cannot all pass a check before any is counted (a refused attempt counts
    too, which changes nothing: the window is fixed). Unlike `guard_email_request` the caller is
    told: an inviter is a signed-in admin of a known organisation, and an invitation answered as
    sent but never emailed would leave a pending row nobody received. `enforce=False` (an
    operator's resend) counts the email without refusing it.
    """
    from apps.core.exceptions import ApplicationError, ServiceUnavailableError

    rate = settings.INVITATION_RATE_PER_ADDRESS
    if not rate:
        return
    usage = _usage(
        None,
        group="guard:invitation:address",
        key=f"account:{mailbox(address)}",
        rate=rate,
        increment=True,
    )
    if usage is None:  # fail closed, as the other guards of requests that send email
        if not enforce:
            return
        raise ServiceUnavailableError(
            "This is temporarily unavailable. Try again shortly.",
            code="rate_limit_unavailable",
        )
    if enforce and usage["should_limit"]:
        wait = _retry_after(usage)
        raise ApplicationError(
            "This address has received too many invitations recently. Try again later.",
            code="invitation_address_limit",
            status_code=429,
            details={"retry_after_seconds": wait},
            headers={"Retry-After": str(wait)},
        )
