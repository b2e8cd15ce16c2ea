"""Logging filters: stamp every record with the request id and job id; redact secrets."""

from __future__ import annotations

import logging
import re
from typing import Any

from .context import job_id_var, request_id_var


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or _request_id_of(record) or "-"
        if not getattr(record, "job_id", None):
            record.job_id = job_id_var.get() or "-"
        return True


def _request_id_of(record: logging.LogRecord) -> str | None:
    # django.request logs 4xx/5xx after the middleware chain (and its context) has returned,
    # but passes the request along; gunicorn's access log passes its atoms, including the
    # response's X-Request-ID header.
    request = getattr(record, "request", None)
    if request is not None and (request_id := getattr(request, "request_id", None)):
        return request_id
    if record.name == "gunicorn.access" and isinstance(record.args, dict):
        return record.args.get("{x-request-id}o") or None
    return None


REDACTED = "[REDACTED]"
_SENSITIVE = r"(?:authorization|password|passwd|secret|token|ticket|api[_-]?key|signature|cookie)"
_PATTERNS = (
    # Authorization: Bearer abc / "authorization": "Bearer abc"
    re.compile(r"(?i)\b(bearer|basic|api-key)\s+[A-Za-z0-9._~+/=-]{8,}"),
    # key=value in query strings, form bodies and reprs
    re.compile(rf"(?i)([?&\s,({{]?[\w-]*{_SENSITIVE}[\w-]*=)([^&\s,;)'\"]+)"),
    # "key": "value" and 'key': 'value'
    re.compile(rf"(?i)([\"'][\w-]*{_SENSITIVE}[\w-]*[\"']\s*:\s*)([\"'])(.*?)\2"),
    # a webhook signing secret or a share link's token, wherever it appears (a repr, a list of
    # secrets, the path of an access log line: /api/v1/shared/lxs_...)
    re.compile(r"(?:whsec|lxs)_[A-Za-z0-9+/=_-]{8,}"),
)
_SENSITIVE_KEY = re.compile(rf"(?i){_SENSITIVE}")
# Record attributes that are never secrets, whatever their name.
_SAFE_ATTRIBUTES = frozenset({"request_id", "job_id"})


# Every pattern above needs one of these words: most lines (access log lines included) have
# none, and one search then replaces three substitutions.
_ANY_HINT = re.compile(rf"(?i)bearer|basic|api-key|whsec_|lxs_|{_SENSITIVE}")


def redact(text: str) -> str:
    if not _ANY_HINT.search(text):
        return text
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}", text)
    return _PATTERNS[3].sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if key not in _SAFE_ATTRIBUTES and _SENSITIVE_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float | bool | list):
        return value
    # Objects (a request passed as `extra`) are rendered by the JSON formatter with str():
    # render them here, redacted (a request's repr holds its query string).
    return redact(str(value))


class RedactionFilter(logging.Filter):
    """Mask credentials in the message, its arguments and `extra` fields before formatting.

    A last line of defence: code must still never log secrets or transcript text.
    """

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # leave a malformed record to the formatter's own error path
            return True
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        for key, value in list(vars(record).items()):
            if key not in self._STANDARD:
                setattr(record, key, _redact_value(key, value))
        return True
