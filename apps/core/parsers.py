"""Request body parsers."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser as DRFJSONParser


class JSONParser(DRFJSONParser):
    """DRF's JSON parser, with a body nested deeper than Python's recursion limit answered as the
    malformed body it is (400) instead of a RecursionError (500). Such a body is a few hundred KB
    of brackets: a cheap way to fill the error logs on any endpoint, anonymous ones included."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
