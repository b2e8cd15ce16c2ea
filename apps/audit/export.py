"""CSV export of audit events (API for org admins, admin action for operators)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from .models import AuditEvent

CSV_COLUMNS = [
    "occurred_at",
    "action",
    "actor_type",
    "actor_id",
    "actor_email",
    "api_key_prefix",
    "ip_address",
    "user_agent",
    "request_id",
    "target_type",
    "target_id",
    "target_repr",
    "metadata",
]


def csv_safe(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def _row(event: AuditEvent) -> list[Any]:
    return [
        event.occurred_at.isoformat(),
        event.action,
        event.actor_type,
        event.actor.public_id if event.actor_id and event.actor else "",
        event.actor_email,
        event.api_key.prefix if event.api_key_id and event.api_key else "",
        event.ip_address,
        event.user_agent,
        event.request_id,
        event.target_type,
        event.target_id,
        event.target_repr,
        json.dumps(event.metadata, sort_keys=True, separators=(",", ":")),
    ]


def csv_rows(events: Iterable[AuditEvent]) -> Iterator[str]:
    """The CSV file, line by line (for a streaming response)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for event in events:
        yield writer.writerow([csv_safe(value) for value in _row(event)])
