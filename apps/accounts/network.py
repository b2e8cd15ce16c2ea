"""Who is on the other end of a request: the client IP (proxy-aware, not spoofable) and metadata.

`X-Forwarded-For` is read only when the request arrives from an explicitly trusted proxy
(`TRUSTED_PROXIES`, a list of addresses or networks) or when the deployment declares how many
proxies sit in front of the app (`TRUSTED_PROXY_COUNT`). Otherwise the address is `REMOTE_ADDR`,
so a client cannot reset a per-IP counter by sending a header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

from apps.core.context import get_request_id

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry)


def _valid_ip(value: str) -> str | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "1.2.3.4:5678"
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    # "::ffff:203.0.113.9" (a dual-stack listener or a proxy writing that form) is that IPv4
    # client: it must not count per IPv6 /64, where every IPv4 client would share one bucket.
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _is_trusted(ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in networks)


def client_ip(request: HttpRequest) -> str:
    """The address of the client that opened the request (see the module docstring)."""
    remote = _valid_ip(request.META.get("REMOTE_ADDR", "")) or "0.0.0.0"  # noqa: S104
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    trusted = _networks(tuple(settings.TRUSTED_PROXIES))
    if trusted:
        if not _is_trusted(remote, trusted):
            return remote
        chain = [ip for ip in (_valid_ip(p) for p in forwarded.split(",")) if ip]
        # Walk from the nearest hop outwards; the first address that is not a proxy of ours
        # is the client. Anything to its left was written by the client and is ignored.
        for ip in reversed(chain):
            if not _is_trusted(ip, trusted):
                return ip
        return chain[0] if chain else remote
    count = int(settings.TRUSTED_PROXY_COUNT)
    if count > 0 and forwarded:
        hops = [p.strip() for p in forwarded.split(",")]
        if len(hops) >= count:
            return _valid_ip(hops[-count]) or remote
    return remote


def ratelimit_ip(request: HttpRequest) -> str:
    """`RATELIMIT_IP_META_KEY` hook: django-ratelimit's `ip` key uses the same address."""
    return client_ip(request)


@dataclass(frozen=True)
class RequestMeta:
    """What the audit trail and the rate limits need from a request, as plain values."""

    ip: str | None = None
    user_agent: str = ""
    request_id: str | None = None

    @classmethod
    def from_request(cls, request: HttpRequest | None) -> RequestMeta:
        if request is None:
            return cls(request_id=get_request_id())
        return cls(
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
            request_id=getattr(request, "request_id", None) or get_request_id(),
        )
