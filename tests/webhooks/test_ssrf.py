"""SSRF: unsafe destinations are refused at registration and at every send; no redirects."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from apps.core.exceptions import ApplicationError
from apps.webhooks import network, services
from apps.webhooks.models import DeliveryStatus

UNSAFE_URLS = [
    "https://127.0.0.1/hook",
    "https://localhost/hook",
    "https://0.0.0.0/hook",
    "https://10.1.2.3/hook",
    "https://172.16.0.1/hook",
    "https://192.168.1.10/hook",
    "https://100.64.0.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://224.0.0.1/hook",
    "https://[::1]/hook",
    "https://[fc00::1]/hook",
    "https://[fe80::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:10.0.1.2]/hook",
    "https://0x7f000001/hook",
    "https://0x7f.1/hook",
    "https://2130706433/hook",
    "https://017700000001/hook",
    "https://127.1/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "http://example.com/hook",
    "https://user:pass@example.com/hook",
    "ftp://example.com/hook",
]


def fake_dns(monkeypatch, mapping: dict[str, list[str]]) -> list[str]:
    """Replace name resolution at the boundary; returns the list of names looked up."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        try:
            ipaddress.ip_address(host)
            return real(host, port, *args, **kwargs)  # a literal address: no DNS involved
        except ValueError:
            pass
        lookups.append(host)
        if host not in mapping:
            raise socket.gaierror("unknown")
        addresses = mapping[host]
        answer = addresses.pop(0) if len(addresses) > 1 else addresses[0]
        family = socket.AF_INET6 if ":" in answer else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (answer, port))]

    monkeypatch.setattr(network.socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.mark.parametrize("url", UNSAFE_URLS)
def test_an_unsafe_url_is_refused_at_registration(url, admin, monkeypatch):
    fake_dns(
        monkeypatch,
        {
            "example.com": ["93.184.216.34"],
            "localhost": ["127.0.0.1"],
            "metadata.google.internal": ["169.254.169.254"],
        },
    )

    with pytest.raises(ApplicationError) as refused:
        services.endpoint_create(
            organisation=admin.organisation, user=None, url=url, event_types=["job.completed"]
        )

    assert refused.value.code == "unsafe_webhook_url"


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "::ffff:127.0.0.1", "fd12::1"]
)
def test_a_hostname_resolving_to_an_internal_address_is_refused(address, admin, monkeypatch):
    fake_dns(monkeypatch, {"hooks.customer.test": [address]})

    with pytest.raises(ApplicationError):
        services.endpoint_create(
            organisation=admin.organisation,
            user=None,
            url="https://hooks.customer.test/x",
            event_types=["job.failed"],
        )


def test_a_hostname_with_one_internal_record_among_public_ones_is_refused(monkeypatch):
    def getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(network.socket, "getaddrinfo", getaddrinfo)

    with pytest.raises(network.UnsafeURLError):
        network.check_url("https://mixed.customer.test/")


def test_a_public_https_url_is_accepted(admin, monkeypatch):
    fake_dns(monkeypatch, {"hooks.customer.test": ["93.184.216.34"]})

    endpoint = services.endpoint_create(
        organisation=admin.organisation,
        user=None,
        url="https://hooks.customer.test/x",
        event_types=["job.failed"],
    )

    assert endpoint.secret.startswith("whsec_")


def test_dns_changed_to_loopback_after_registration_is_refused_at_send(
    admin, receiver, monkeypatch, settings
):
    settings.WEBHOOK_REQUIRE_HTTPS = False
    fake_dns(monkeypatch, {"hooks.customer.test": ["93.184.216.34", "127.0.0.1"]})
    url = f"http://hooks.customer.test:{receiver.port}/hooks"
    services.endpoint_create(
        organisation=admin.organisation, user=None, url=url, event_types=["job.completed"]
    )
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert receiver.requests == []  # the loopback canary got nothing
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.last_error.startswith("Refused:")


def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(
    admin, loopback, receiver, monkeypatch
):
    # First answer: the receiver (allowed by the loopback test setting); any later lookup would
    # answer an unroutable private address, so a second resolution would fail the delivery.
    fake_dns(monkeypatch, {"hooks.customer.test": ["127.0.0.1"]})
    url = f"http://hooks.customer.test:{receiver.port}/hooks"
    services.endpoint_create(
        organisation=admin.organisation, user=None, url=url, event_types=["job.completed"]
    )
    lookups = fake_dns(monkeypatch, {"hooks.customer.test": ["127.0.0.1", "10.255.255.1"]})
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert (status, delivery.last_error) == (DeliveryStatus.SUCCEEDED, "")
    assert lookups == ["hooks.customer.test"]
    assert receiver.requests[0].headers["host"].startswith("hooks.customer.test")


def test_redirects_are_not_followed(admin, loopback, receiver):
    canary = type(receiver)().start()
    try:
        receiver.answers = [(302, {"Location": canary.url})]
        services.endpoint_create(
            organisation=admin.organisation,
            user=None,
            url=receiver.url,
            event_types=["job.completed"],
        )
        delivery = services.event_publish(
            organisation=admin.organisation, event_type="job.completed", data={}
        )[0]

        services.delivery_attempt(delivery_id=str(delivery.pk))

        delivery.refresh_from_db()
        assert canary.requests == []
        assert delivery.status == DeliveryStatus.PENDING
        assert delivery.last_status_code == 302
        assert "redirects are not followed" in delivery.last_error
    finally:
        canary.stop()


def test_loopback_is_refused_without_the_test_setting(admin, receiver, settings):
    settings.WEBHOOK_REQUIRE_HTTPS = False

    with pytest.raises(network.UnsafeURLError):
        network.check_url(receiver.url)
