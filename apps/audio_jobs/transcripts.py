"""Rendered transcripts, cached per job and format, invalidated when a transcript is edited.

Rendering a transcript (loading its segments JSON, building `verbose_json`, encoding) is the most
expensive read of the API, so the rendered body of the current revision is kept in the shared
cache per (job, format, pretty) for `TRANSCRIPT_CACHE_SECONDS`. Callers look the job up in the
caller's organisation first (tenant scoping stays with the selectors); the cache is only
consulted for a job they may read.

A transcript changes after it is written only through `apps.audio_jobs.editing` (an edit or a
revert), which calls `transcript_changed`. Entries are kept with the job's *generation*
(`apps.core.generations`): the edit replaces it at once and again after its commit, so a body
rendered from the previous revision by a reader racing the edit is never served, and the old
bodies are deleted after the commit. Earlier revisions (`?revision=`) are rebuilt from the
history and not cached. Deleting a transcript (with its job, organisation or by retention)
deletes its cached bodies once the deletion commits, so deleted text does not linger in Redis.

A per-process cache (local memory, without Redis) cannot be invalidated from the process that
made the edit, so there nothing is cached.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.db import transaction

from apps.core.exceptions import NotFoundError
from apps.core.generations import GenerationalCache

from . import formats
from .models import Transcript

logger = logging.getLogger(__name__)


class _RenderedCache(GenerationalCache):
    @property
    def timeout(self) -> int:
        if isinstance(caches["default"], LocMemCache):
            return 0  # other processes could never see an edit's invalidation
        return super().timeout


RENDERED = _RenderedCache("transcript:v2", timeout_setting="TRANSCRIPT_CACHE_SECONDS")


class Rendered(NamedTuple):
    body: str
    media_type: str
    extension: str
    revision: int


def _key(job_id: Any, fmt: str, pretty: bool) -> str:
    return RENDERED.entry_key(job_id, f"{fmt}:{int(pretty)}")


def _all_keys(job_id: Any) -> list[str]:
    return [_key(job_id, fmt, False) for fmt in formats.FORMATS] + [_key(job_id, "json", True)]


def _transcript(job_id: Any) -> Transcript:
    try:
        return Transcript.objects.select_related("job").get(job_id=job_id)
    except Transcript.DoesNotExist:  # the job was deleted since the caller looked it up
        raise NotFoundError("No such job.", code="job_not_found") from None


def transcript_render(
    *, job_id: Any, fmt: str, pretty: bool = False, revision: int | None = None
) -> Rendered:
    """A completed job's transcript in `fmt`: the current revision (cached), or `revision`
    (0: the machine output) rebuilt from the history; 400 `invalid_revision` past the current.

    The caller has found the job in the caller's organisation and checked it is completed."""
    from .editing import transcript_state_at

    pretty = pretty and fmt == "json"  # only JSON has a pretty form
    output = formats.FORMATS[fmt]
    if revision is not None:
        transcript = _transcript(job_id)
        state = transcript_state_at(transcript=transcript, revision=revision)
        body, _media_type, _extension = formats.render_transcript(
            state.as_result(transcript), fmt, pretty=pretty
        )
        return Rendered(body, output.media_type, output.extension, revision)

    def load() -> tuple[str, int]:
        transcript = _transcript(job_id)
        body, _media_type, _extension = formats.render_transcript(
            transcript.as_result(), fmt, pretty=pretty
        )
        return body, transcript.revision

    body, current = RENDERED.get_or_load(job_id, f"{fmt}:{int(pretty)}", load)
    return Rendered(body, output.media_type, output.extension, current)


def forget_rendered(job_id: Any) -> None:
    """Drop the cached bodies of a job's transcript once the current transaction commits."""

    def drop() -> None:
        try:
            cache.delete_many(_all_keys(job_id))
        except Exception:
            logger.exception("could not drop cached transcript %s", job_id)

    transaction.on_commit(drop)


def transcript_changed(job_id: Any) -> None:
    """An edit or revert is being written: no body of the previous revision may be served once
    it commits (nor later in its transaction), and the old bodies go after the commit."""
    RENDERED.invalidate([job_id])
    forget_rendered(job_id)


def on_transcript_deleted(sender: Any, instance: Transcript, **kwargs: Any) -> None:
    forget_rendered(instance.job_id)
