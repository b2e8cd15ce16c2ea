"""kombu's Redis transport without redis-py's automatic retries on the event loop's connections.

redis-py (6 and later) retries a failed command by reconnecting inside the call. kombu's Redis
transport reads its consumer connections (BRPOP for task queues, pub/sub for broadcasts such as
remote control) from the worker's event loop, when the socket is readable, expecting a failure to
reach it as an error: it then re-establishes the connection ("Connection to broker lost") and
registers the new sockets with the loop. When redis-py instead reconnects inside that read, the
read goes on, blocking, on a fresh socket with nothing to read: the worker's main thread waits
there for ever, logging nothing and consuming nothing. This was caught in this project's Redis
restart test (`tests/audio_jobs/test_pipeline.py`), with Celery's SIGUSR1 stack dump showing the
main thread in `PubSub.parse_response` -> `Retry.call_with_retry` -> a socket read; the same family
of hangs is reported upstream (celery#8030, celery#9054).

``install()`` gives the connections kombu makes for the event loop (``asynchronous=True``) a
``Retry`` with no retries, so a broken connection surfaces as the error kombu handles. Publishing
and other synchronous commands keep redis-py's retries. Called when the Celery app is made.
"""

from __future__ import annotations

from typing import Any

_MARK = "_lexiscore_no_event_loop_retry"


def install() -> bool:
    """Patch ``kombu.transport.redis.Channel._connparams`` once; False without redis/kombu."""
    try:
        from kombu.transport import redis as kombu_redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        return False
    original = kombu_redis.Channel._connparams
    if getattr(original, _MARK, False):
        return True

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        params = original(self, asynchronous=asynchronous)
        if asynchronous:
            params["retry"] = Retry(NoBackoff(), 0)
        return params

    setattr(_connparams, _MARK, True)
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    return True
