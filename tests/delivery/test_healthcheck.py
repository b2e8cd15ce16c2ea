"""docker/healthcheck.py: the container health checks used by the Dockerfile and compose."""

from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
from collections.abc import Iterator

import pytest

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "docker" / "healthcheck.py")
assert spec and spec.loader
healthcheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(healthcheck)


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers like Django would: 400 for a Host it does not allow, 200 on the health path."""

    allowed_host = "stt.example.test"
    healthy_path = "/healthz"

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0]
        if host != self.allowed_host:
            status = 400
        elif self.path == self.healthy_path:
            status = 200
        else:
            status = 404
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("allowed_hosts", "expected"),
    [
        ("stt.example.test", "stt.example.test"),
        (" stt.example.test , api.example.test", "stt.example.test"),
        (".example.test", "example.test"),
        ("*", "localhost"),
        ("*,stt.example.test", "stt.example.test"),
        ("", "localhost"),
    ],
)
def test_the_host_header_is_one_django_allows(monkeypatch, allowed_hosts, expected):
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", allowed_hosts)

    assert healthcheck.allowed_host() == expected


@pytest.mark.parametrize(
    ("bind", "port"), [("0.0.0.0:8000", 8000), ("[::]:9000", 9000), ("unix:/run/g.sock", 8000)]
)
def test_the_port_comes_from_the_gunicorn_bind(bind, port):
    assert healthcheck.bind_port(bind, 8000) == port


def test_web_is_healthy_when_healthz_answers_200(monkeypatch, server):
    monkeypatch.setenv("GUNICORN_BIND", f"0.0.0.0:{server}")
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", "stt.example.test,.example.test")

    assert healthcheck.main(["web"]) == 0


def test_web_is_unhealthy_when_django_rejects_the_host(monkeypatch, server):
    monkeypatch.setenv("GUNICORN_BIND", f"0.0.0.0:{server}")
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", "other.example.test")

    assert healthcheck.main(["web"]) == 1


def test_web_is_unhealthy_when_nothing_listens(monkeypatch):
    monkeypatch.setenv("GUNICORN_BIND", f"0.0.0.0:{closed_port()}")

    assert healthcheck.main(["web"]) == 1


def test_flower_is_checked_on_its_unauthenticated_healthcheck_page(monkeypatch, server):
    monkeypatch.setattr(Handler, "allowed_host", "localhost")
    monkeypatch.setattr(Handler, "healthy_path", "/healthcheck")
    monkeypatch.setenv("FLOWER_PORT", str(server))

    assert healthcheck.main(["flower"]) == 0


def test_an_unreachable_broker_is_unhealthy(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")

    assert healthcheck.main(["broker"]) == 1


def test_an_unknown_check_is_a_usage_error():
    assert healthcheck.main(["nope"]) == 2


def test_empty_variables_mean_their_defaults_as_everywhere(monkeypatch):
    """A copied .env.example leaves values empty: the check must not crash on them."""
    monkeypatch.setenv("HEALTHCHECK_TIMEOUT_SECONDS", "")
    monkeypatch.setenv("GUNICORN_BIND", "")
    monkeypatch.setenv("FLOWER_PORT", "")

    spec.loader.exec_module(healthcheck)  # the timeout is read at import

    assert healthcheck.TIMEOUT_SECONDS == 4.0
    assert healthcheck._env("GUNICORN_BIND", "0.0.0.0:8000") == "0.0.0.0:8000"
    assert healthcheck.bind_port(healthcheck._env("GUNICORN_BIND", "0.0.0.0:8000"), 8000) == 8000
