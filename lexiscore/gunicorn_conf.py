"""gunicorn settings, from GUNICORN_* environment variables.

SIGTERM makes gunicorn refuse new connections, let in-flight requests finish within
`graceful_timeout`, then exit 0: deploys drain instead of cutting requests
(tests/delivery/test_gunicorn_drain.py).
"""

import multiprocessing
import os


def _env(name: str, default):  # type: ignore[no-untyped-def]
    """An environment variable; empty counts as unset (as `lexiscore.settings.base.Env` does)."""
    return os.environ.get(name) or default


bind = _env("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(_env("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1))
worker_class = _env("GUNICORN_WORKER_CLASS", "gthread")
# One thread per process: requests are short and CPU-bound in Python (most are served from the
# caches), and threads of one process contend for the GIL. On 2 cores, 4 processes x 4 threads
# served ~250 req/s, 4 x 1 ~313 req/s (docs/benchmarks.md). gthread with one thread still keeps
# idle keep-alive connections in its poller; add threads only for slow, I/O-bound requests.
threads = int(_env("GUNICORN_THREADS", "1"))
timeout = int(_env("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(_env("GUNICORN_GRACEFUL_TIMEOUT", "30"))
# Longer than the idle timeout of common proxies and load balancers (60 s), so that they, not
# gunicorn, close idle connections (no race on a reused connection); idle keep-alive
# connections cost gthread only a poller entry.
keepalive = int(_env("GUNICORN_KEEPALIVE", "75"))
backlog = int(_env("GUNICORN_BACKLOG", "2048"))
max_requests = int(_env("GUNICORN_MAX_REQUESTS", "5000"))
max_requests_jitter = int(_env("GUNICORN_MAX_REQUESTS_JITTER", "500"))
# Limits on request lines and headers (uploads are limited by Django and the proxy).
limit_request_line = 8190
limit_request_fields = 100
accesslog = _env("GUNICORN_ACCESSLOG", "-")
# "off": no access log from gunicorn (when the proxy in front of it keeps one).
_access_level = "WARNING" if accesslog == "off" else "INFO"
if accesslog == "off":
    accesslog = None
errorlog = "-"
loglevel = _env("GUNICORN_LOGLEVEL", "info")
forwarded_allow_ips = _env("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
# gunicorn's runtime control socket (`gunicornc`: worker counts, reload, shutdown): off unless
# GUNICORN_CONTROL_SOCKET names a path. Operators use signals (docs/operations.md), and its
# default path, ~/.gunicorn/gunicorn.ctl, is shared by every gunicorn of one user on a host.
control_socket = _env("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket
worker_tmp_dir = _env("GUNICORN_WORKER_TMP_DIR", "") or (
    "/dev/shm" if os.path.isdir("/dev/shm") else None
)

# Logs: the same JSON (or text) lines as the application, with the request id on access lines
# (taken from the response's X-Request-ID header) and credentials redacted.
_log_format = _env("LOG_FORMAT", "json")
access_log_format = (
    '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s" request_id=%({x-request-id}o)s'
)
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "apps.core.logging.ContextFilter"},
        "redact": {"()": "apps.core.logging.RedactionFilter"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(job_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": _log_format,
            "filters": ["context", "redact"],
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "level": loglevel.upper(), "propagate": False},
        # %(U)s is the path without the query string: tokens in URLs never reach the log.
        "gunicorn.access": {"handlers": ["console"], "level": _access_level, "propagate": False},
    },
}


# Prometheus multiprocess mode (PROMETHEUS_MULTIPROC_DIR): every gunicorn worker writes its
# values to files there and /metrics aggregates them; start empty, drop a dead worker's gauges.
def on_starting(server) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))
    _sweep_temp_folder()


# The master sweeps this container's temp folder at start and hourly: a worker killed mid-upload
# (timeout, out of memory) leaves Django's upload file there, and the hourly beat task sweeps only
# the folder of the worker that runs it. Same rules as the settings (FILE_UPLOAD_TEMP_DIR,
# TEMP_FILE_MAX_AGE_SECONDS), read without loading Django into the master.
def _sweep_temp_folder() -> None:
    import tempfile
    from pathlib import Path

    from apps.core.tempfiles import start_sweeping, sweep_temp_dir

    root = Path(_env("FILE_UPLOAD_TEMP_DIR", tempfile.gettempdir()))
    age = float(_env("TEMP_FILE_MAX_AGE_SECONDS", 24 * 60 * 60))
    start_sweeping(lambda: sweep_temp_dir(root, age))


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# Refuse new connections while draining. On SIGTERM a gthread worker stops accepting but keeps
# its copy of the listening socket open until its last request is done, so the kernel would go
# on completing handshakes into the backlog: new clients would hang, then be reset when the
# worker exits, after they had sent their request (a proxy cannot safely retry a POST that was
# reset, but retries a refused connection). Closing the worker's copy once it stops accepting
# makes the port refuse as soon as the master and every worker have let go of it. Only at
# shutdown (not alive): a worker also stops accepting while it is at worker_connections.
def post_worker_init(worker) -> None:
    set_accept_enabled = getattr(worker, "set_accept_enabled", None)
    if set_accept_enabled is None:  # not gthread
        return

    def close_listeners_at_shutdown(enabled: bool) -> None:
        set_accept_enabled(enabled)
        if not enabled and not worker.alive:
            for listener in worker.sockets:
                listener.close()  # this process's descriptor only; closing twice is harmless

    worker.set_accept_enabled = close_listeners_at_shutdown
