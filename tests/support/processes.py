"""Real processes for integration tests: a throwaway Redis and a real Celery worker.

Fault tests kill these, never the shared services on the standard ports.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import secrets
import shutil
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


class _ProcessGroup:
    """A subprocess in its own session (so ``kill`` reaches its children too) logging to
    ``log_path``; every one still running is killed when the test process exits. ``kill`` then
    removes its private folder ``dir`` (subclasses without one keep their log instead)."""

    dir: Path
    log_path: Path
    process: subprocess.Popen | None = None

    def _spawn(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        _live_groups.add(self)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the process and its children (whatever a test left running)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        _live_groups.discard(self)
        self._cleanup()

    def _cleanup(self) -> None:
        """After the kill: remove the private folder (the log goes with it)."""
        shutil.rmtree(self.dir, ignore_errors=True)


_live_groups: set[_ProcessGroup] = set()


@atexit.register
def _kill_leftover_groups() -> None:
    for group in list(_live_groups):
        group.kill()


class CeleryWorker(_ProcessGroup):
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
        self._spawn(self.command, self.env)
        if wait_ready:
            wait_for(lambda: "ready." in self.log(), timeout=60, what="celery worker ready")
        return self

    def child_pids(self) -> list[int]:
        assert self.process is not None
        return child_pids(self.process.pid)

    def terminate(self, timeout: float = 60) -> int:
        """Warm shutdown (SIGTERM): the running task finishes first."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    # kill(): SIGKILL the whole process group, always, even when the main process has already
    # exited: an orphaned pool child would otherwise keep reconnecting to its broker's port and
    # could consume a later test's messages once another private Redis is given that port.

    def _cleanup(self) -> None:
        """The log (a file of its own) is kept: a failing test reads it afterwards."""


def child_pids(parent: int, matching: str | None = None) -> list[int]:
    """The processes whose parent is ``parent`` (whose command line contains ``matching``)."""
    pattern = ["-f", matching] if matching else []
    out = subprocess.run(
        ["pgrep", "-P", str(parent), *pattern], capture_output=True, text=True
    ).stdout
    return [int(pid) for pid in out.split()]


def spawned_children(parent: int) -> int:
    """How many processes ``parent`` started with multiprocessing's spawn (a preparation pool's)."""
    return len(child_pids(parent, "spawn_main"))


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
        from kombu import pools

        # kombu keeps its pools in a registry keyed by connection: closing the app's pool alone
        # would leave it there, closed, for the next test on the same broker URL ("Acquire on
        # closed pool", even for an eager task's apply_async). reset() closes and forgets all.
        pools.reset()
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


def run_manage(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`manage.py ARGS` in a subprocess with exactly `env` (output captured, not checked)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def database_url(database_name: str) -> str:
    """DATABASE_URL of this run's server (DATABASE_URL in the environment) for another database."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/lexiscore")
    return base.rsplit("/", 1)[0] + "/" + database_name


class GunicornServer(_ProcessGroup):
    """gunicorn as deployed: lexiscore/gunicorn_conf.py, production settings, generated secrets.

    It listens on a free loopback port and uses the given database and Redis; media, uploads in
    progress (FILE_UPLOAD_TEMP_DIR), var files and gunicorn's control socket live in a private
    folder, so several servers (and bench/api/run.py) can run side by side.
    """

    def __init__(
        self,
        *,
        database_name: str,
        redis_url: str,
        workers: int = 2,
        graceful_timeout: int = 30,
        env: dict[str, str] | None = None,
        app: str = "lexiscore.wsgi:application",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lexiscore-gunicorn-"))
        self.log_path = self.dir / "gunicorn.log"
        self.upload_dir = self.dir / "uploads"
        self.media_root = self.dir / "media"
        for folder in (self.upload_dir, self.media_root, self.dir / "static", self.dir / "run"):
            folder.mkdir()
        self.graceful_timeout = graceful_timeout
        self.port = free_port()
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "GUNICORN_", "CELERY_", "PROMETHEUS_", "TEST_"))
        }
        self.env = {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "lexiscore.settings.production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
            "JWT_SIGNING_KEY": secrets.token_urlsafe(48),
            "FIELD_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": database_url(database_name),
            "REDIS_URL": redis_url,
            "CACHE_URL": "",
            "STORAGE_BACKEND": "local",
            "MEDIA_ROOT": str(self.media_root),
            "STATIC_ROOT": str(self.dir / "static"),
            "FILE_UPLOAD_TEMP_DIR": str(self.upload_dir),
            "LEXISCORE_VAR_DIR": str(self.dir / "var"),
            # gunicorn's control socket goes to $XDG_RUNTIME_DIR, else one shared ~/.gunicorn.
            "XDG_RUNTIME_DIR": str(self.dir / "run"),
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_GRACEFUL_TIMEOUT": str(graceful_timeout),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.command = [
            *(sys.executable, "-m", "gunicorn"),
            *("--config", "lexiscore/gunicorn_conf.py", app),
        ]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GunicornServer:
        """Start gunicorn and wait until /healthz answers; on another port if this one was taken."""
        for _attempt in range(3):
            self.env["GUNICORN_BIND"] = f"127.0.0.1:{self.port}"
            self._spawn(self.command, self.env)
            wait_for(
                lambda: self.process.poll() is not None or self._healthy(),
                timeout=90,
                what=f"gunicorn on {self.url}/healthz",
            )
            if self.process.poll() is None:
                return self
            self.port = free_port()
        raise RuntimeError(f"gunicorn did not start:\n{self.log()[-3000:]}")

    def _healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.settimeout(5)
                sock.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def terminate(self) -> None:
        """SIGTERM to the master, as `docker stop` sends it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)


class CeleryBeat(_ProcessGroup):
    """`celery -A lexiscore beat` as a real subprocess: publishes the periodic tasks of the test
    settings (with `env` overrides, e.g. a short WEBHOOK_SWEEP_INTERVAL_SECONDS) to `broker_url`.

    Beat only publishes; a `CeleryWorker` on the same broker runs what it sends. Its schedule
    file lives in a private folder, so every beat starts with a fresh schedule.
    """

    def __init__(
        self, *, broker_url: str, database_name: str, env: dict[str, str] | None = None
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lexiscore-beat-"))
        self.log_path = self.dir / "beat.log"
        self.command = [
            *(sys.executable, "-m", "celery", "-A", "lexiscore", "beat"),
            *("--schedule", str(self.dir / "celerybeat-schedule")),
            *("--max-interval", "1", "--loglevel", "INFO"),
        ]
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "lexiscore.settings.test",
            "TEST_CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": database_url(database_name),
            "PYTHONUNBUFFERED": "1",
            "TEST_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> CeleryBeat:
        process = self._spawn(self.command, self.env)
        wait_for(
            lambda: process.poll() is not None or "beat: Starting..." in self.log(),
            timeout=60,
            what="celery beat to start",
        )
        if process.poll() is not None:
            raise RuntimeError(f"celery beat did not start:\n{self.log()[-3000:]}")
        return self
