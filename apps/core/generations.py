"""Read-through caching that never serves data older than the last committed change.

A `GenerationalCache` keeps entries per *scope* (a user, an organisation) in the shared cache,
next to the scope's *generation*, a random token. Writers call `invalidate(scopes)`: it replaces
the generations at once and again when the current transaction commits. Readers fetch the
generation together with the entry in one round trip (`get_many`) and use the entry only if it
was stored under that same generation.

Why not just delete entries: a reader that loaded the old row just before a writer committed
could store it after the writer's delete, and it would be served until it expired. Here the
reader reads the generation *before* loading from the database and tags what it stores with it;
the writer replaces the generation *after* its commit. An entry loaded before a commit therefore
carries an outdated generation and is never used: the change applies to the very next request,
on every replica. (An entry loaded after the commit sees the committed data.)

The cache is an optimisation: when it cannot be reached, reads load from the database and
invalidations are logged; entries then live at most their timeout. A timeout of 0 turns a cache
off (the default with the per-process local-memory cache, which other processes cannot
invalidate). Keys include the database name, so switching `DATABASE_URL` to a restored database
never serves entries of the old one (`backup_restore` over the live database clears the cache).

Models whose rows are cached use `InvalidatingQuerySet` (`update()`/`bulk_update()` invalidate
the scopes they touch) and `invalidate_on_change` for their save/delete signals, so every ORM
write path invalidates without each caller having to remember it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import connection, models, transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MISSING = object()

# Generations outlive entries by far, so an entry never meets a generation that expired and was
# recreated; an entry whose generation is gone simply misses.
GENERATION_TIMEOUT = 7 * 24 * 3600


class GenerationalCache:
    """Entries of `namespace`, kept for the number of seconds in setting `timeout_setting`."""

    def __init__(self, namespace: str, *, timeout_setting: str) -> None:
        self.namespace = namespace
        self.timeout_setting = timeout_setting

    @property
    def timeout(self) -> int:
        return int(getattr(settings, self.timeout_setting, 0) or 0)

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    def _prefix(self) -> str:
        return f"{self.namespace}:{connection.settings_dict['NAME']}"

    def generation_key(self, scope: Any) -> str:
        return f"{self._prefix()}:gen:{scope}"

    def entry_key(self, scope: Any, key: str) -> str:
        if len(key) > 64:
            key = hashlib.sha256(key.encode()).hexdigest()
        return f"{self._prefix()}:entry:{scope}:{key}"

    def get_or_load(self, scope: Any, key: str, load: Callable[[], T]) -> T:
        """The entry (`scope`, `key`) if it is of the scope's current generation, else `load()`
        (stored unless it returned None)."""
        if not self.enabled:
            return load()
        generation_key, entry_key = self.generation_key(scope), self.entry_key(scope, key)
        try:
            found = cache.get_many([generation_key, entry_key])
        except Exception:
            logger.warning("%s cache unavailable; reading the database", self.namespace)
            return load()
        generation = found.get(generation_key)
        entry = found.get(entry_key, _MISSING)
        if entry is not _MISSING and entry[0] == generation:
            return entry[1]
        value = load()
        if value is not None:
            try:
                cache.set(entry_key, (generation, value), timeout=self.timeout)
            except Exception:
                logger.warning("%s cache unavailable; entry not stored", self.namespace)
        return value

    def _replace_generations(self, scopes: list[str]) -> None:
        try:
            cache.set_many(
                {self.generation_key(scope): uuid.uuid4().hex for scope in scopes},
                timeout=GENERATION_TIMEOUT,
            )
        except Exception:
            logger.exception(
                "%s cache invalidation failed for %d scope(s); entries expire within %d s",
                self.namespace,
                len(scopes),
                self.timeout,
            )

    def invalidate(self, scopes: Iterable[Any]) -> None:
        """Make every entry of these scopes stale, now and again once the transaction commits.

        The immediate replacement stops later reads in the same transaction from using an entry;
        the one after the commit is what excludes entries loaded before it.
        """
        if not self.enabled:
            return
        ids = sorted({str(scope) for scope in scopes if scope is not None})
        if ids:
            self._replace_generations(ids)
            transaction.on_commit(lambda: self._replace_generations(ids))


class InvalidatingQuerySet(models.QuerySet):
    """A QuerySet whose `update()` and `bulk_update()` invalidate `generational_cache` for every
    value of `scope_field` among the rows they change (subclass and set both)."""

    generational_cache: GenerationalCache
    scope_field: str

    def update(self, **kwargs: Any) -> int:
        scopes = (
            list(self.order_by().values_list(self.scope_field, flat=True).distinct())
            if self.generational_cache.enabled
            else []
        )
        updated = super().update(**kwargs)
        if updated:
            self.generational_cache.invalidate(scopes)
        return updated

    def bulk_update(self, objs: Iterable[Any], fields: Any, batch_size: int | None = None) -> int:
        objs = list(objs)
        updated = super().bulk_update(objs, fields, batch_size=batch_size)
        self.generational_cache.invalidate(getattr(obj, self.scope_field) for obj in objs)
        return updated


def invalidate_on_change(
    generational_cache: GenerationalCache, scope_field: str
) -> Callable[..., None]:
    """A post_save/post_delete receiver invalidating the saved or deleted row's scope."""

    def receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
        generational_cache.invalidate([getattr(instance, scope_field)])

    return receiver
