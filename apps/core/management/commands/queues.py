"""Show each queue's depth and the age of its oldest waiting message (Redis broker)."""

from __future__ import annotations

import json

import redis
from django.core.management.base import BaseCommand, CommandError

from apps.core.maintenance import queue_stats


class Command(BaseCommand):
    help = "Depth per queue and oldest message age, read from the Redis broker."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--broker-url", help="Default: CELERY_BROKER_URL.")

    def handle(self, *args, **options) -> None:
        try:
            stats = queue_stats(broker_url=options["broker_url"])
        except redis.RedisError as exc:
            raise CommandError(f"Cannot read the broker ({type(exc).__name__}: {exc}).") from exc
        if stats is None:
            raise CommandError("The broker is not Redis; queue inspection needs Redis.")
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "queues": [
                            {
                                "queue": r.queue,
                                "depth": r.depth,
                                "oldest_age_seconds": r.oldest_age_seconds,
                            }
                            for r in stats.queues
                        ],
                        "unacked": stats.unacked,
                    }
                )
            )
            return
        self.stdout.write(f"{'queue':<20} {'depth':>8} {'oldest age':>12}")
        for row in stats.queues:
            age = "-" if row.oldest_age_seconds is None else f"{row.oldest_age_seconds:.1f}s"
            self.stdout.write(f"{row.queue:<20} {row.depth:>8} {age:>12}")
        self.stdout.write(f"unacknowledged (running or lost): {stats.unacked}")
