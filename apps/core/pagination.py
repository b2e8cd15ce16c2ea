"""Page-number pagination with strict parameters.

`page` is a whole number from 1 and `page_size` a whole number from 1 (larger than
`max_page_size` is served as `max_page_size`); anything else is a 400 with the error body, on
every list, rather than DRF's silent fallback to the default size or a 404 for `page=0`. A page
past the last one is 404 `not_found`.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


def _whole_number(request: Any, name: str) -> None:
    raw = request.query_params.get(name)
    if raw is None:
        return
    # At most 100 digits: int() of a string of over 4300 raises (Python's limit on int
    # conversion), which would be a 500. A page past the end is a 404, a page size past the
    # maximum is served as the maximum.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 100 and int(raw) >= 1):
        raise ValidationError({name: [f"Must be a whole number from 1; got {raw[:20]!r}."]})


class StandardPagination(PageNumberPagination):
    page_size = 25
    page_size_query_param = "page_size"
    max_page_size = 100
    last_page_strings = ()

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> Any:
        _whole_number(request, self.page_query_param)
        _whole_number(request, self.page_size_query_param)
        return super().paginate_queryset(queryset, request, view)
