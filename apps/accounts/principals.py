"""A shared cache of what every authenticated request reads: the user and their memberships.

Each API request authenticates a JWT (the user row, to check `is_active` and the token version)
and resolves the organisation (the membership row with its organisation). Both are small and
change rarely, so they are cached in the shared cache (Redis) per user, next to a *generation*
token. Any change that matters for authentication or tenancy replaces the user's generation
(`invalidate_users`), and an entry is used only while it carries the current generation.

Why a generation and not a delete: a request that read the database just before another one
committed a revocation could otherwise write the old row back into the cache after the delete.
Here the reader fetches the generation *before* reading the database and tags what it stores
with it; the writer replaces the generation *after* its transaction commits
(`transaction.on_commit`). Whatever was read before the commit therefore carries an outdated
generation and is never used: a password change, deactivation, removal from an organisation or
`token_version` bump applies to the very next request, on every web replica.

Signals cover saves and deletes of users, memberships and organisations; code that changes them
with `QuerySet.update()` calls `invalidate_users` itself. `AUTH_PRINCIPAL_CACHE_SECONDS` bounds
how long an entry may live (a backstop for a change made outside the application, e.g. in SQL);
0 turns the cache off, which is the default when the cache is per-process (embedded mode: a
local-memory cache cannot be invalidated across processes). If the cache is unreachable, requests
read the database as before.

The cached user is loaded without its password hash (deferred: read from the database on the
rare paths that check a password), so no hash is ever copied into the cache.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from .models import Membership, User

logger = logging.getLogger(__name__)

KEY_PREFIX = "principal:v1"
# Generations outlive entries by far, so an entry never meets a generation that expired and
# was recreated; an entry whose generation is gone simply misses.
GENERATION_TIMEOUT = 7 * 24 * 3600


@dataclass(frozen=True)
class Principal:
    user: User
    memberships: tuple[Membership, ...]


def _timeout() -> int:
    return int(getattr(settings, "AUTH_PRINCIPAL_CACHE_SECONDS", 0) or 0)


def enabled() -> bool:
    return _timeout() > 0


def _generation_key(public_id: Any) -> str:
    return f"{KEY_PREFIX}:gen:{public_id}"


def _entry_key(public_id: Any) -> str:
    return f"{KEY_PREFIX}:entry:{public_id}"


def _load(public_id: Any) -> Principal | None:
    user = User.objects.defer("password").filter(public_id=public_id).first()
    if user is None:
        return None
    memberships = tuple(
        Membership.objects.select_related("organisation")
        .filter(user_id=user.pk)
        .order_by("organisation__name", "organisation_id")  # as selectors.user_memberships
    )
    return Principal(user=user, memberships=memberships)


def principal_get(public_id: Any) -> Principal | None:
    """The user with this `public_id` (the token's user claim) and their memberships (with
    their organisations), or None.

    From the cache when it holds an entry of the user's current generation, else from the
    database (and then cached under the generation read before the database was).
    """
    if not enabled():
        return _load(public_id)
    generation_key, entry_key = _generation_key(public_id), _entry_key(public_id)
    try:
        found = cache.get_many([generation_key, entry_key])
    except Exception:  # the cache is an optimisation: never fail a request because of it
        logger.warning("principal cache unavailable; reading the database", exc_info=True)
        return _load(public_id)
    generation = found.get(generation_key)
    entry = found.get(entry_key)
    if entry is not None and entry[0] == generation:
        return entry[1]
    principal = _load(public_id)
    if principal is not None:
        try:
            cache.set(entry_key, (generation, principal), timeout=_timeout())
        except Exception:
            logger.warning("principal cache unavailable; entry not stored", exc_info=True)
    return principal


def _new_generations(public_ids: list[str]) -> None:
    try:
        cache.set_many(
            {_generation_key(public_id): uuid.uuid4().hex for public_id in public_ids},
            timeout=GENERATION_TIMEOUT,
        )
    except Exception:
        # Entries then live at most AUTH_PRINCIPAL_CACHE_SECONDS more.
        logger.exception("principal cache invalidation failed for %d user(s)", len(public_ids))


def invalidate_users(public_ids: Iterable[Any]) -> None:
    """Make cached principals of these users (by `public_id`, the token's user claim) stale, now
    and again once the transaction commits.

    The immediate replacement stops later reads in the same transaction from using an entry;
    the one after commit is what excludes entries read before the commit.
    """
    ids = sorted({str(public_id) for public_id in public_ids if public_id is not None})
    if not ids or not enabled():
        return
    _new_generations(ids)
    transaction.on_commit(lambda: _new_generations(ids))


def invalidate_user_pks(user_pks: Iterable[Any]) -> None:
    """`invalidate_users` for users known by primary key."""
    pks = [pk for pk in user_pks if pk is not None]
    if pks and enabled():
        invalidate_users(User.objects.filter(pk__in=pks).values_list("public_id", flat=True))


def invalidate_organisation(organisation_id: Any) -> None:
    """Stale every member's principal (the organisation is part of each membership)."""
    if enabled():
        invalidate_users(
            User.objects.filter(memberships__organisation_id=organisation_id).values_list(
                "public_id", flat=True
            )
        )


# Signal receivers, connected in AccountsConfig.ready(). Deleting an organisation or a user
# deletes their memberships first, whose receivers invalidate each member.


def on_user_change(sender: Any, instance: User, **kwargs: Any) -> None:
    invalidate_users([instance.public_id])


def on_membership_change(sender: Any, instance: Membership, **kwargs: Any) -> None:
    invalidate_user_pks([instance.user_id])


def on_organisation_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    invalidate_organisation(instance.pk)
