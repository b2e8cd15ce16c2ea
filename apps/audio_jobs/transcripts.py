"""Rendered transcripts, cached: a completed job's transcript never changes.

`Transcript` rows are written once, when the job completes, and only ever deleted. Rendering one
(loading its segments JSON, building `verbose_json`, encoding) is the most expensive read of the
API, so the rendered body is kept in the shared cache per (job, format, pretty) for
`TRANSCRIPT_CACHE_SECONDS`. Callers look the job up in the caller's organisation first (tenant
scoping stays with the selectors); the cache is only consulted for a job they may read.

Deleting a transcript (with its job, organisation or by retention) deletes its cached bodies
once the deletion commits, so deleted text does not linger in Redis.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from apps.core.exceptions import NotFoundError

from . import formats
from .models import Transcript

logger = logging.getLogger(__name__)

KEY_PREFIX = "transcript:v1"


def _key(job_id: Any, fmt: str, pretty: bool) -> str:
    return f"{KEY_PREFIX}:{job_id}:{fmt}:{int(pretty)}"


def _all_keys(job_id: Any) -> list[str]:
    return [_key(job_id, fmt, False) for fmt in formats.FORMATS] + [_key(job_id, "json", True)]


def transcript_render(*, job_id: Any, fmt: str, pretty: bool = False) -> tuple[str, str, str]:
    """`(body, media type, file extension)` of a completed job's transcript in `fmt`.

    The caller has found the job in the caller's organisation and checked it is completed."""
    pretty = pretty and fmt == "json"  # only JSON has a pretty form
    timeout = settings.TRANSCRIPT_CACHE_SECONDS
    key = _key(job_id, fmt, pretty)
    body = None
    if timeout > 0:
        try:
            body = cache.get(key)
        except Exception:  # an optimisation only: render from the database instead
            logger.warning("transcript cache unavailable", exc_info=True)
    if body is None:
        try:
            transcript = Transcript.objects.get(job_id=job_id)
        except Transcript.DoesNotExist:  # the job was deleted since the caller looked it up
            raise NotFoundError("No such job.", code="job_not_found") from None
        body, _media_type, _extension = formats.render_transcript(
            transcript.as_result(), fmt, pretty=pretty
        )
        if timeout > 0:
            try:
                cache.set(key, body, timeout=timeout)
            except Exception:
                logger.warning("transcript cache unavailable", exc_info=True)
    output = formats.FORMATS[fmt]
    return body, output.media_type, output.extension


def forget_rendered(job_id: Any) -> None:
    """Drop the cached bodies of a job's transcript once the current transaction commits."""

    def drop() -> None:
        try:
            cache.delete_many(_all_keys(job_id))
        except Exception:
            logger.exception("could not drop cached transcript %s", job_id)

    transaction.on_commit(drop)


def on_transcript_deleted(sender: Any, instance: Transcript, **kwargs: Any) -> None:
    forget_rendered(instance.job_id)
