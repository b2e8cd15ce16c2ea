"""Deliveries over HTTPS to a real TLS receiver on loopback, with certificates made for the test.

The delivering process trusts the CA named by SSL_CERT_FILE (OpenSSL reads it whenever a default
context is made), as a deployment whose receivers use a private CA would. A certificate that
does not chain to a trusted CA, or names another host, fails the attempt before any byte of the
event is sent; the delivery is retried on its schedule, not lost.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apps.webhooks import services
from apps.webhooks.models import DeliveryStatus
from tests.notify_support import Receiver

from .test_delivery import endpoint_for


class Authority:
    """A test certificate authority that issues server certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject, issuer, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def server_context(self, directory: Path, *, names: list[x509.GeneralName]) -> ssl.SSLContext:
        """A server-side TLS context with a fresh key and a certificate for `names`."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver")])
        cert = (
            self._builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / "server.pem", directory / "server.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context


def _usage(*, cert_sign: bool = False, digital_signature: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


LOOPBACK = [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]


@pytest.fixture
def trusted_ca(tmp_path, monkeypatch) -> Authority:
    """The CA this process trusts (and no other: SSL_CERT_FILE replaces the system bundle)."""
    authority = Authority("LexisCore test CA")
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.write_ca(tmp_path / "ca.pem")))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return authority


@pytest.fixture
def https(settings):
    """Loopback receivers allowed, HTTPS required as in production."""
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    settings.WEBHOOK_REQUIRE_HTTPS = True
    return settings


@pytest.fixture
def tls_receiver(tmp_path):
    """Starts HTTPS receivers with a certificate from a given authority (stopped after)."""
    servers: list[Receiver] = []

    def start(authority: Authority, names: list[x509.GeneralName] = LOOPBACK) -> Receiver:
        server = Receiver(tls=authority.server_context(tmp_path, names=names)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_a_delivery_over_https_to_a_trusted_receiver_is_signed_and_succeeds(
    admin, https, trusted_ca, tls_receiver, documented_verify
):
    receiver = tls_receiver(trusted_ca)
    assert receiver.url.startswith("https://127.0.0.1:")
    endpoint = endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={"job_id": "j1"}
    )[0]

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    assert status == DeliveryStatus.SUCCEEDED
    [request] = receiver.requests
    assert documented_verify(endpoint.secret, request.headers, request.body) is True
    assert request.json()["data"] == {"job_id": "j1"}


@pytest.mark.parametrize(
    "case",
    ["signed by an untrusted CA", "issued for another host"],
)
def test_a_certificate_that_does_not_verify_fails_the_attempt_before_anything_is_sent(
    admin, https, trusted_ca, tls_receiver, case
):
    if case == "signed by an untrusted CA":
        receiver = tls_receiver(Authority("Someone else's CA"))
        expected = "certificate verify failed"
    else:
        receiver = tls_receiver(trusted_ca, [x509.DNSName("hooks.example.org")])
        expected = "IP address mismatch"
    endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={"job_id": "j1"}
    )[0]

    status = services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    assert status == DeliveryStatus.PENDING
    assert receiver.requests == []
    assert delivery.next_attempt_at is not None  # retried on the schedule, not lost
    [attempt] = delivery.log.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("SSLCertVerificationError")
    assert expected in attempt.error
    assert expected in delivery.last_error
