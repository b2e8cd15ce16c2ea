"""Benchmark: the live feed's open streams on one ASGI process (`web-events`).

    .venv/bin/python bench/feed/streams.py [--streams 1000] [--organisations 100] \
        [--events 300] [--rate 20] [--workers 1]

Starts gunicorn with uvicorn's worker as compose runs `web-events` (production settings, a
throwaway Redis, a throwaway test database `test_lexiscore_bench_feed`), opens `--streams`
server-sent-event streams spread over `--organisations` organisations (each with an API key), then
commits `--events` events at `--rate` per second from this process, as workers commit them, each
to a random organisation. Every stream of that organisation must receive it.

Reports: connect time, delivery latency (commit to the stream's client reading it) p50/p95/max,
events delivered against expected, and the server's memory and CPU. Client and server share the
machine: on a small VM the client's own CPU adds to the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lexiscore.settings.test")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, connections  # noqa: E402

from tests.support.processes import GunicornServer, RedisServer, child_pids  # noqa: E402


def rss_and_cpu(pids: list[int]) -> tuple[float, float]:
    rss = cpu = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss += (
                int(
                    next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[
                        1
                    ]
                )
                / 1024
            )
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
        except (FileNotFoundError, StopIteration):
            continue
    return rss, cpu


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Client:
    def __init__(self, port: int, key: str, organisation: str) -> None:
        self.port, self.key, self.organisation = port, key, organisation
        self.received: dict[int, float] = {}
        self.connect_seconds = 0.0
        self.status = 0
        self.error = ""

    async def run(self, stop: asyncio.Event) -> None:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            (
                "GET /api/v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Api-Key {self.key}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status_line = await reader.readline()
        self.status = int(status_line.split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.connect_seconds = time.perf_counter() - started
        if self.status != 200:
            self.error = (await reader.read(2000)).decode(errors="replace")
            writer.close()
            return
        try:
            while not stop.is_set():
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"id: "):
                    # Chunked transfer: a chunk-size line may precede; ids are what we need.
                    self.received.setdefault(int(line[4:].strip()), time.perf_counter())
        finally:
            writer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--organisations", type=int, default=100)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    settings.DATABASES["default"]["NAME"] = "lexiscore_bench_feed"
    connection.settings_dict["NAME"] = "lexiscore_bench_feed"
    test_db = connection.creation.create_test_db(verbosity=0, keepdb=True)
    from apps.accounts.models import Organisation
    from apps.feed.services import feed_publish
    from tests.factories import ApiKeyFactory

    redis_server = RedisServer(appendonly=False).start()
    settings.REDIS_URL = redis_server.url
    server = None
    try:
        organisations, keys = [], {}
        for i in range(args.organisations):
            organisation = Organisation.objects.create(name=f"bench-{i}")
            organisations.append(organisation)
            keys[organisation.pk] = ApiKeyFactory(organisation=organisation).raw_key
        server = GunicornServer(
            database_name=test_db,
            redis_url=redis_server.url,
            workers=args.workers,
            app="lexiscore.asgi:application",
            env={
                "GUNICORN_WORKER_CLASS": "uvicorn_worker.UvicornWorker",
                "FEED_STREAM_SECONDS": "3600",
                "RATE_LIMIT_ENABLED": "false",
                "LOG_LEVEL": "WARNING",
            },
        ).start()
        clients = [
            Client(
                server.port,
                keys[organisations[i % len(organisations)].pk],
                organisations[i % len(organisations)].pk,
            )
            for i in range(args.streams)
        ]
        committed: dict[int, tuple[float, object]] = {}

        def publish() -> None:
            try:
                for _ in range(args.events):
                    organisation = random.choice(organisations)
                    event = feed_publish(
                        organisation_id=organisation.pk, type="job.progress", data={}
                    )
                    committed[event.id] = (time.perf_counter(), organisation.pk)
                    time.sleep(1 / args.rate)
            finally:
                connections.close_all()

        async def drive() -> float:
            stop = asyncio.Event()
            tasks = []
            opened = time.perf_counter()
            for i, client in enumerate(clients):
                tasks.append(asyncio.create_task(client.run(stop)))
                if i % 50 == 49:
                    await asyncio.sleep(0.05)  # a ramp, as users arrive
            while sum(1 for c in clients if c.status) < len(clients):
                await asyncio.sleep(0.1)
                if time.perf_counter() - opened > 120:
                    break
            open_seconds = time.perf_counter() - opened
            await asyncio.sleep(2)  # every stream subscribed and idle
            publisher = threading.Thread(target=publish)
            publisher.start()
            while publisher.is_alive():
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # the last events' delivery
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return open_seconds

        pids = [server.process.pid, *child_pids(server.process.pid)]
        rss_before, cpu_before = rss_and_cpu(pids)
        open_seconds = asyncio.run(drive())
        rss_after, cpu_after = rss_and_cpu(pids)

        latencies, expected, delivered = [], 0, 0
        for client in clients:
            for event_id, (at, organisation_id) in committed.items():
                if organisation_id != client.organisation:
                    continue
                expected += 1
                if event_id in client.received:
                    delivered += 1
                    latencies.append((client.received[event_id] - at) * 1000)
        statuses = sorted({c.status for c in clients})
        connects = [c.connect_seconds * 1000 for c in clients if c.status == 200]
        print(
            f"streams={args.streams} organisations={args.organisations} events={args.events} "
            f"rate={args.rate}/s workers={args.workers} statuses={statuses}"
        )
        print(
            f"all streams open in {open_seconds:.1f} s; connect p50 "
            f"{percentile(connects, 50):.0f} ms p95 {percentile(connects, 95):.0f} ms"
        )
        print(
            f"delivered {delivered}/{expected}; latency p50 {percentile(latencies, 50):.0f} ms "
            f"p95 {percentile(latencies, 95):.0f} ms max {max(latencies or [0]):.0f} ms "
            f"mean {statistics.fmean(latencies or [0]):.0f} ms"
        )
        refused = [c.error for c in clients if c.status != 200]
        if refused:
            print(f"{len(refused)} refused, e.g.: {refused[0][:300]!r}")
        print(
            f"server RSS {rss_before:.0f} MB before the streams (idle, all processes), "
            f"{rss_after:.0f} MB with them; server CPU {cpu_after - cpu_before:.1f} s"
        )
    finally:
        if server is not None:
            server.kill()
        redis_server.kill()
        connections.close_all()
        connection.creation.destroy_test_db(test_db, verbosity=0)


if __name__ == "__main__":
    main()
