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
    stem, dot, extension = filename.rpartition(".")
    if not dot:
        stem, extension = filename, ""
    # The stem and the extension apart: a name with no ASCII letters ("会议记录.srt") becomes
    # "transcript.srt", not "srt".
    ascii_stem = _ascii(stem) or fallback
    ascii_extension = _ascii(extension)
    ascii_name = f"{ascii_stem}.{ascii_extension}" if ascii_extension else ascii_stem
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _ascii(value: str) -> str:
    value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._")
