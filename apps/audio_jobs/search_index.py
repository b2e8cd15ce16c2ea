"""Building the stored search vectors of transcripts again (migration 0016, and
`manage.py search_reindex` after `unaccent` became available)."""

from __future__ import annotations

import unicodedata
from typing import Any

# The text search configuration of the trigger and the queries (migration 0016): `simple`
# words, accents folded when the `unaccent` extension exists.
SEARCH_CONFIG = "lexiscore_search"

# The configuration, and `lexiscore_fold(text)` (file names are compared folded, as SQLite's
# function of the same name does): with `unaccent` where it exists or can be created, found in
# whichever schema holds it; without it, plain `simple` and `lower`. Runs again safely
# (migration 0016, `manage.py search_reindex`). Words with letters of any kind and digits are
# mapped (`numword`: "café2"); ASCII-only ones have nothing to fold.
CONFIGURE_SQL = """
DO $$
DECLARE
    home text;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS unaccent;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'unaccent could not be created (%): search will keep accents', SQLERRM;
    END;
    IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = 'lexiscore_search') THEN
        CREATE TEXT SEARCH CONFIGURATION lexiscore_search (COPY = pg_catalog.simple);
    END IF;
    SELECT n.nspname INTO home FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'unaccent';
    IF home IS NOT NULL THEN
        EXECUTE format(
            'ALTER TEXT SEARCH CONFIGURATION lexiscore_search ALTER MAPPING FOR '
            'word, hword, hword_part, numword, hword_numpart WITH %I.unaccent, simple', home);
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION lexiscore_fold(text) RETURNS text LANGUAGE sql STABLE '
            'AS %L', format('SELECT lower(%I.unaccent(%L::regdictionary, $1))',
                            home, home || '.unaccent'));
    ELSE
        CREATE OR REPLACE FUNCTION lexiscore_fold(text) RETURNS text LANGUAGE sql IMMUTABLE
            AS 'SELECT lower($1)';
    END IF;
END
$$;
"""
UNCONFIGURE_SQL = """
DROP FUNCTION IF EXISTS lexiscore_fold(text);
DROP TEXT SEARCH CONFIGURATION IF EXISTS lexiscore_search;
"""


def folds_accents(connection: Any) -> bool:
    """Whether the configuration maps words through `unaccent`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_ts_config_map m JOIN pg_ts_config c "
            "ON c.oid = m.mapcfg JOIN pg_ts_dict d ON d.oid = m.mapdict "
            "WHERE c.cfgname = %s AND d.dictname = 'unaccent')",
            [SEARCH_CONFIG],
        )
        return bool(cursor.fetchone()[0])


def rebuild_vectors(connection: Any, *, config: str = SEARCH_CONFIG, batch: int = 500) -> int:
    """Build every transcript's `search_vector` with `config`, in key order, a batch per
    transaction (autocommit outside one): the table stays writable. The statement timeout is off
    meanwhile (a batch of long transcripts takes seconds: 2,000 half-hour ones took 11 s, past
    the 5 s `migrate` runs with), then back to the connection's own. Returns the rows done."""
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")
        try:
            return _rebuild(cursor, config, batch)
        finally:
            cursor.execute("RESET statement_timeout")


def _rebuild(cursor: Any, config: str, batch: int) -> int:
    done, last = 0, None
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


# Letters NFKD leaves whole, folded as PostgreSQL's unaccent folds them.
_STROKES = str.maketrans(
    {"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE",
     "đ": "d", "Đ": "D", "ħ": "h", "Ħ": "H", "ŧ": "t", "Ŧ": "T", "\u0131": "i", "þ": "th"}
)  # fmt: skip


def fold(text: str) -> str:
    """Text as search compares it: accents dropped (NFKD, combining marks removed, and the
    letters with strokes unaccent also folds) and case folded ("Zürich" -> "zurich", "Straße"
    -> "strasse", "Łódź" -> "lodz")."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_STROKES))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def register_sqlite_fold(sender: Any, connection: Any, **kwargs: Any) -> None:
    """`connection_created` receiver: SQL function `lexiscore_fold(text)` on SQLite (the embedded
    defaults' search compares folded text)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            "lexiscore_fold", 1, lambda value: fold(value) if value else value, deterministic=True
        )
