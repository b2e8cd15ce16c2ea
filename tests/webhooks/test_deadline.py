"""One deadline bounds a whole delivery try, whatever the receiver does; a try cut off by the
task's own time limit is still a logged, failed try."""

from __future__ import annotations

import socket
import threading
import time
from unittest import mock

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from apps.webhooks import network, services
from apps.webhooks.models import DeliveryStatus
from tests.webhooks.test_delivery import endpoint_for


def trickling_receiver(*, head: bytes, seconds: float) -> int:
    """A receiver that sends `head`, then a byte every 0.2 s for `seconds`: each read succeeds,
    so a per-read socket timeout never fires."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def run():
        connection, _ = server.accept()
        with connection, server:
            connection.recv(65536)
            connection.sendall(head)
            end = time.monotonic() + seconds
            try:
                while time.monotonic() < end:
                    connection.sendall(b"a")
                    time.sleep(0.2)
            except OSError:
                pass  # the client gave up, as it must

    threading.Thread(target=run, daemon=True).start()
    return port


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Slow: ",  # the headers never end
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",  # the body never ends
    ],
)
def test_a_receiver_that_trickles_is_cut_off_at_the_total_timeout(loopback, settings, head):
    settings.WEBHOOK_TOTAL_TIMEOUT = 1.0
    settings.WEBHOOK_CONNECT_TIMEOUT = 1.0
    port = trickling_receiver(head=head, seconds=6.0)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="within 1 s"):
        network.post(f"http://127.0.0.1:{port}/", body=b"{}", headers={})

    assert time.monotonic() - started < 2.5


def test_a_try_cut_off_by_the_task_time_limit_is_logged_and_counted(admin, loopback, receiver):
    endpoint = endpoint_for(admin.organisation, receiver.url)
    delivery = services.event_publish(
        organisation=admin.organisation, event_type="job.completed", data={}
    )[0]

    with mock.patch.object(network, "post", side_effect=SoftTimeLimitExceeded()):
        services.delivery_attempt(delivery_id=str(delivery.pk))

    delivery.refresh_from_db()
    endpoint.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING  # retried on its schedule
    assert delivery.attempts == 1
    assert "time limit" in delivery.last_error
    assert delivery.log.count() == 1
