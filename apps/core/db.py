"""Database connection handling for requests that last: a live-feed stream, a request waiting
for its job (the OpenAI-compatible routes)."""

from __future__ import annotations

from django.db import close_old_connections, connection


def release_connection() -> None:
    """Hand this thread's database connection back to the pool (CONN_MAX_AGE=0 closes it), as a
    request's end would: a request that lasts minutes and holds a connection for its whole life
    would let only DB_POOL_MAX_SIZE of them be open at once. Not inside a transaction (a
    test's)."""
    if not connection.in_atomic_block:
        close_old_connections()
