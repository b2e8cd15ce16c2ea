"""Run the whole platform on one machine: web (gunicorn), a Celery worker for every queue, beat.

Meant for a single-machine install and for trying LexisCore out: with no DATABASE_URL/REDIS_URL it
uses SQLite, local media and the filesystem broker. Ctrl-C (or SIGTERM) stops every process
gracefully: gunicorn drains requests and the worker finishes or hands back its task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from workers.queues import Queue


class Command(BaseCommand):
    help = "Run web, worker and beat together (embedded mode or against configured services)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default=os.environ.get("GUNICORN_BIND") or "127.0.0.1:8000")
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--worker-concurrency", type=int, default=1)
        parser.add_argument("--no-beat", action="store_true")

    def handle(self, *args, **options) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"]}
        env["GUNICORN_WORKERS"] = env.get("GUNICORN_WORKERS") or str(options["web_workers"])
        # gunicorn's own lines in the same format as the application's (text in local settings).
        env["LOG_FORMAT"] = settings.LOG_FORMAT
        env["GUNICORN_BIND"] = options["bind"]
        python = sys.executable
        queues = ",".join(str(q) for q in Queue if q != Queue.TRANSCRIPTION_GPU)
        commands = {
            "web": [
                python,
                "-m",
                "gunicorn",
                "-c",
                "lexiscore/gunicorn_conf.py",
                "lexiscore.wsgi:application",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "lexiscore",
                "worker",
                "-Q",
                queues,
                "--concurrency",
                str(options["worker_concurrency"]),
                "--hostname",
                "embedded@%h",
                "--loglevel",
                "INFO",
            ],
        }
        if not options["no_beat"]:
            commands["beat"] = [
                python,
                "-m",
                "celery",
                "-A",
                "lexiscore",
                "beat",
                "--schedule",
                settings.CELERY_BEAT_SCHEDULE_FILENAME,
                "--loglevel",
                "INFO",
            ]
        database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        self.stdout.write(
            f"LexisCore on http://{options['bind']}  database={database} "
            f"broker={settings.CELERY_BROKER_URL.split('://')[0]} "
            f"storage={settings.STORAGE_BACKEND}"
        )
        processes = {
            name: subprocess.Popen(command, env=env, cwd=settings.BASE_DIR)  # noqa: S603
            for name, command in commands.items()
        }
        stopping = False

        def stop(signum, _frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        try:
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with {process.returncode}; stopping")
                        exit_code = process.returncode or 1
                        stopping = True
                time.sleep(0.5)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 60
            for process in processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
        if exit_code:
            sys.exit(exit_code)
