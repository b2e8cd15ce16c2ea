"""Benchmark: webhook fan-out of 1,000 events to a real HTTP receiver on loopback.

    DJANGO_SETTINGS_MODULE=lexiscore.settings.test .venv/bin/python bench/webhooks/fanout.py \
        [--events 1000] [--endpoints 1] [--threads 4]

Creates a throwaway test database (test_lexiscore_bench), publishes the events (one delivery
row per event and endpoint, as `event_publish` does inside a job's transaction), then runs the
delivery service from N threads (standing in for N webhook-worker processes): resolve and check
the address, sign, POST, record the try.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lexiscore.settings.test")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, connections  # noqa: E402

from tests.notify_support import Receiver  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    settings.WEBHOOK_ALLOW_LOOPBACK = True  # the receiver is on loopback (benchmark only)
    settings.WEBHOOK_REQUIRE_HTTPS = False
    settings.DATABASES["default"]["NAME"] = "lexiscore_bench"
    connection.settings_dict["NAME"] = "lexiscore_bench"
    test_db = connection.creation.create_test_db(verbosity=0, keepdb=True)
    from apps.accounts.models import Organisation
    from apps.webhooks import services
    from apps.webhooks.models import DeliveryStatus, WebhookDelivery

    receiver = Receiver().start()
    try:
        org = Organisation.objects.create(name="bench")
        for _ in range(args.endpoints):
            services.endpoint_create(
                organisation=org, user=None, url=receiver.url, event_types=["job.completed"]
            )
        started = time.perf_counter()
        ids: list[str] = []
        services_transaction_free = services.event_publish
        for i in range(args.events):
            ids += [
                str(d.pk)
                for d in services_transaction_free(
                    organisation=org, event_type="job.completed", data={"job_id": f"job-{i}"}
                )
            ]
        publish = time.perf_counter() - started

        def deliver(delivery_id: str) -> str:
            try:
                return services.delivery_attempt(delivery_id=delivery_id)
            finally:
                connections.close_all()

        started = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            statuses = list(pool.map(deliver, ids))
        send = time.perf_counter() - started
        ok = WebhookDelivery.objects.filter(
            organisation=org, status=DeliveryStatus.SUCCEEDED
        ).count()
        print(
            f"events={args.events} endpoints={args.endpoints} deliveries={len(ids)} "
            f"threads={args.threads}"
        )
        print(
            f"publish (write delivery rows): {publish:.2f} s "
            f"({len(ids) / publish:.0f} deliveries/s)"
        )
        print(
            f"deliver (check, sign, POST, record): {send:.2f} s "
            f"({len(ids) / send:.0f} deliveries/s); succeeded={ok}; "
            f"receiver got {len(receiver.requests)}; other statuses "
            f"{sorted(set(statuses) - {'succeeded'})}"
        )
    finally:
        receiver.stop()
        connections.close_all()
        connection.creation.destroy_test_db(test_db, verbosity=0)


if __name__ == "__main__":
    main()
