"""Building the stored search vectors of transcripts again (migration 0016, and
`manage.py search_reindex` after `unaccent` became available)."""

from __future__ import annotations

import unicodedata
from typing import Any

# The text search configuration of the trigger and the queries (migration 0016): `simple`
# words, accents folded when the `unaccent` extension exists.
SEARCH_CONFIG = "lexiscore_search"


def rebuild_vectors(connection: Any, *, config: str = SEARCH_CONFIG, batch: int = 2000) -> int:
    """Build every transcript's `search_vector` with `config`, in key order, a batch per
    transaction (autocommit outside one): the table stays writable. Returns the rows done."""
    done, last = 0, None
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT job_id FROM audio_jobs_transcript WHERE (%s::uuid IS NULL OR job_id > %s)"
                " ORDER BY job_id LIMIT %s",
                [last, last, batch],
            )
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return done
            cursor.execute(
                "UPDATE audio_jobs_transcript SET search_vector = "
                "to_tsvector(%s::regconfig, COALESCE(text, '')) WHERE job_id = ANY(%s)",
                [config, ids],
            )
            done += len(ids)
            last = ids[-1]


def fold(text: str) -> str:
    """Text as the SQLite search compares it: accents dropped (NFKD, combining marks removed)
    and case folded ("Zürich" -> "zurich", "Straße" -> "strasse")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def register_sqlite_fold(sender: Any, connection: Any, **kwargs: Any) -> None:
    """`connection_created` receiver: SQL function `lexiscore_fold(text)` on SQLite (the embedded
    defaults' search compares folded text)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            "lexiscore_fold", 1, lambda value: fold(value) if value else value, deterministic=True
        )
