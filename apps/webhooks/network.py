"""SSRF-safe outbound HTTP for webhooks.

`check_url` parses a URL and resolves its host, refusing anything but public addresses (every
A/AAAA record is checked with `ipaddress.is_global`, IPv4-mapped IPv6 by the address it maps,
numeric hosts in any non-canonical spelling are refused before resolution). `post` connects to
the address that was checked (no second lookup: no DNS rebinding), sends one request and never
follows a redirect. Loopback is allowed only when `WEBHOOK_ALLOW_LOOPBACK` is set (tests).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_CANONICAL_V4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")
# Hosts that are numbers in some spelling (2130706433, 0x7f.1, 017700000001, 127.1).
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)
BLOCKED_HOSTNAMES = {"localhost", "metadata.google.internal", "metadata"}
MAX_RESPONSE_BYTES = 64 * 1024


class UnsafeURLError(ValueError):
    """The URL may not be called (scheme, credentials, or a non-public address)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked IP address the connection goes to


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    duration_ms: int


def _address_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return _address_allowed(mapped)
        if address.teredo is not None:
            return False
    if address.is_loopback and settings.WEBHOOK_ALLOW_LOOPBACK:
        return True
    return address.is_global and not address.is_multicast and not address.is_reserved


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURLError(f"The host {host!r} does not resolve.") from exc
    # sockaddr[0] is the address text for AF_INET/AF_INET6 (typeshed also allows int).
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str) -> Target:
    """Validate `url` and resolve it to one checked address (raises UnsafeURLError)."""
    try:
        parts = urlsplit((url or "").strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError("The URL is malformed.") from exc
    scheme = parts.scheme.lower()
    allowed = ("https",) if settings.WEBHOOK_REQUIRE_HTTPS else ("https", "http")
    if scheme not in allowed:
        raise UnsafeURLError(f"The URL must use {' or '.join(allowed)}.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError("The URL may not contain credentials.")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeURLError("The URL has no host.")
    internal = host in BLOCKED_HOSTNAMES or host.endswith((".localhost", ".internal", ".local"))
    if internal and not (settings.WEBHOOK_ALLOW_LOOPBACK and host == "localhost"):
        raise UnsafeURLError(f"The host {host!r} is internal.")
    literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if ":" in host:
        try:
            literal = ipaddress.IPv6Address(host.split("%")[0])
        except ValueError as exc:
            raise UnsafeURLError("The host is not a valid address.") from exc
    elif _NUMERIC_HOST.match(host):
        if not _CANONICAL_V4.match(host):
            raise UnsafeURLError("Encoded IP addresses are not allowed.")
        literal = ipaddress.IPv4Address(host)
    port = port or (443 if scheme == "https" else 80)
    addresses = [str(literal)] if literal is not None else _resolve(host, port)
    if not addresses:
        raise UnsafeURLError(f"The host {host!r} does not resolve.")
    for address in addresses:
        if not _address_allowed(ipaddress.ip_address(address.split("%")[0])):
            raise UnsafeURLError(f"The host {host!r} resolves to a non-public address.")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme=scheme, host=host, port=port, path=path, address=addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        self._ssl_context = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._ssl_context)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # SNI and certificate checks use the host name; the socket goes to the checked address.
        self.sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, *, body: bytes, headers: dict[str, str]) -> Response:
    """POST `body` to `url` once: checked address, no redirects, connect and total timeouts.

    Raises UnsafeURLError for a refused destination and OSError/TimeoutError/HTTPException for
    transport failures. 3xx answers are returned as they are (a failure to the caller).
    """
    target = check_url(url)
    started = time.monotonic()
    total = float(settings.WEBHOOK_TOTAL_TIMEOUT)
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = cls(target, timeout=settings.WEBHOOK_CONNECT_TIMEOUT)
    # One deadline for the whole try: a socket timeout bounds each read only, and a receiver
    # sending a byte at a time would hold the try (and a webhooks worker) open for ever. At the
    # deadline the socket is shut down, which ends any read or write blocked on it.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(total, expire)
    timer.daemon = True
    timer.start()
    try:
        connection.connect()
        connection.sock.settimeout(max(0.1, total - (time.monotonic() - started)))
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        read = 0
        while read < MAX_RESPONSE_BYTES and not expired.is_set():
            chunk = response.read(8192)
            if not chunk:
                break
            read += len(chunk)
        if expired.is_set():
            raise TimeoutError(f"The endpoint did not answer within {total:g} s.")
        return Response(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(f"The endpoint did not answer within {total:g} s.") from exc
        raise
    finally:
        timer.cancel()
        connection.close()
