"""HTTP helpers shared by every app's views."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote


def attachment_header(filename: str, *, fallback: str) -> str:
    """A `Content-Disposition: attachment` value: an ASCII-only name and the exact one (RFC 6266).

    The ASCII name keeps letters, digits, `.`, `_` and `-` only (`fallback` when nothing is
    left), so no client can read a `;` or `=` of the name as another parameter; `filename*`
    carries the exact name percent-encoded.
    """
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("._") or fallback
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
