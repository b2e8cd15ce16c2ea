"""Container health checks that need no curl (the slim images have none).

    python docker/healthcheck.py web      # gunicorn answers GET /healthz with 200
    python docker/healthcheck.py flower   # Flower answers GET /healthcheck with 200
    python docker/healthcheck.py broker   # the Celery broker accepts a connection (beat)

Exit 0 when healthy, 1 otherwise, with one line on stderr saying why. Celery workers are checked
with `celery -A lexiscore inspect ping -d <name>@$HOSTNAME` instead (see docker-compose.yml).
"""

from __future__ import annotations

import http.client
import os
import sys


def _env(name: str, default: str) -> str:
    """An environment variable; empty counts as unset (as `lexiscore.settings.base.Env` does)."""
    return os.environ.get(name) or default


TIMEOUT_SECONDS = float(_env("HEALTHCHECK_TIMEOUT_SECONDS", "4"))


def allowed_host() -> str:
    """A Host header Django accepts: the first DJANGO_ALLOWED_HOSTS entry that names a host."""
    for entry in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(","):
        host = entry.strip().lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


def bind_port(bind: str, default: int) -> int:
    """The port of a gunicorn-style bind address such as 0.0.0.0:8000 or [::]:8000."""
    _, _, port = bind.rpartition(":")
    return int(port) if port.isdigit() else default


def http_ok(port: int, path: str, host: str) -> tuple[bool, str]:
    # A plain HTTP/1.1 request to this container; redirects count as failure.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request("GET", path, headers={"Host": host, "User-Agent": "lexiscore-health"})
        status = connection.getresponse().status
    except OSError as exc:
        return False, f"GET {path} on port {port} failed: {exc}"
    finally:
        connection.close()
    return status == 200, f"GET {path} on port {port} answered {status}"


def check_web() -> tuple[bool, str]:
    port = bind_port(_env("GUNICORN_BIND", "0.0.0.0:8000"), 8000)
    return http_ok(port, "/healthz", allowed_host())


def check_flower() -> tuple[bool, str]:
    # /healthcheck is the one Flower page that needs no credentials.
    port = int(_env("FLOWER_PORT", "5555"))
    return http_ok(port, "/healthcheck", "localhost")


def check_broker() -> tuple[bool, str]:
    from kombu import Connection

    url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "")
    if not url:
        return False, "neither CELERY_BROKER_URL nor REDIS_URL is set"
    try:
        with Connection(url, connect_timeout=TIMEOUT_SECONDS) as connection:
            connection.ensure_connection(max_retries=1, timeout=TIMEOUT_SECONDS)
            connection.default_channel  # noqa: B018 - opening a channel pings Redis
    except Exception as exc:  # any failure to reach the broker means unhealthy
        return False, f"broker unreachable: {type(exc).__name__}: {exc}"
    return True, "broker reachable"


CHECKS = {"web": check_web, "flower": check_flower, "broker": check_broker}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CHECKS:
        sys.stderr.write(f"usage: healthcheck.py {{{'|'.join(CHECKS)}}}\n")
        return 2
    healthy, detail = CHECKS[argv[0]]()
    if not healthy:
        sys.stderr.write(detail + "\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
