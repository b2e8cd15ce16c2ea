"""Real processes for integration tests: a throwaway Redis and a real Celery worker.

Fault tests kill these, never the shared services on the standard ports.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"Timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A private redis-server on a free port; `restart()` keeps data when started with AOF."""

    def __init__(self, *, appendonly: bool = True) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lexiscore-redis-")
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start redis-server; retry on another port if this one was taken meanwhile.

        The server is identified by its pid (INFO server), so a test never talks to another
        test's Redis that happens to listen on a port picked at the same time.
        """
        for _attempt in range(5):
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes" if self.appendonly else "no",
                    "--appendfsync",
                    "always",
                    "--dir",
                    self.dir,
                    "--maxmemory-policy",
                    "noeviction",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
            try:
                wait_for(
                    lambda client=client: self.process.poll() is not None or _pings(client),
                    timeout=10,
                    what="redis-server",
                )
            except TimeoutError:
                self.process.kill()
                raise
            if self.process.poll() is None and _server_pid(client) == self.process.pid:
                return self
            self.kill()
            self.port = free_port()
        raise RuntimeError("Could not start a private redis-server")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def _server_pid(client: redis.Redis) -> int | None:
    try:
        return int(client.info("server")["process_id"])
    except redis.RedisError:
        return None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


_live_workers: set[CeleryWorker] = set()


@atexit.register
def _kill_leftover_workers() -> None:
    """A test that forgot to stop its worker must not leave it running after the session."""
    for worker in list(_live_workers):
        worker.kill()


class CeleryWorker:
    """`celery -A lexiscore worker` as a real subprocess against the test database."""

    def __init__(
        self,
        *,
        broker_url: str,
        database_name: str,
        queues: list[str],
        concurrency: int = 1,
        pool: str = "prefork",
        include: list[str] | None = None,
        env: dict[str, str] | None = None,
        hostname: str = "test",
    ) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="lexiscore-worker-", suffix=".log")[1])
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "lexiscore",
            "worker",
            "-Q",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--hostname",
            f"{hostname}-{os.getpid()}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        if include:
            self.command += ["--include", ",".join(include)]
        db_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/lexiscore")
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "lexiscore.settings.test",
            "TEST_CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": db_url.rsplit("/", 1)[0] + "/" + database_name,
            "PYTHONUNBUFFERED": "1",
            "TEST_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self, *, wait_ready: bool = True) -> CeleryWorker:
        _live_workers.add(self)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait_ready:
            wait_for(lambda: "ready." in self.log(), timeout=60, what="celery worker ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def terminate(self, timeout: float = 60) -> int:
        """Warm shutdown (SIGTERM): the running task finishes first."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children).

        Always, even when the main process has already exited: an orphaned pool child would
        otherwise keep reconnecting to its broker's port and could consume a later test's
        messages once another private Redis is given that port.
        """
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        _live_workers.discard(self)


@contextlib.contextmanager
def running_worker(**kwargs) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(**kwargs).start()
    try:
        yield worker
    finally:
        worker.kill()


@contextlib.contextmanager
def app_broker(url: str) -> Iterator[None]:
    """Make this test process publish to `url` (the app's producer pool is rebuilt both ways)."""
    from lexiscore.celery import app

    def reset_pool() -> None:
        if app._pool is not None:
            app._pool.force_close_all()
            app._pool = None
        app.amqp._producer_pool = None

    previous = app.conf.broker_url
    app.conf.broker_url = url
    reset_pool()
    try:
        yield
    finally:
        app.conf.broker_url = previous
        reset_pool()
