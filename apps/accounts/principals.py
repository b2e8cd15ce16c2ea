"""A shared cache of what every authenticated request reads: the user and their memberships.

Each API request authenticates a JWT (the user row, to check `is_active` and the token version)
and resolves the organisation (the membership row with its organisation). Both are small and
change rarely, so they are kept per user in a `GenerationalCache` (apps.core.generations: an
entry loaded before a committed change is never served). Any change that matters for
authentication or tenancy invalidates the user: a password change, deactivation, removal from
an organisation, role change or `token_version` bump applies to the very next request, on every
web replica.

Signals cover saves and deletes of users, memberships and organisations; code that changes them
with `QuerySet.update()` calls `invalidate_users` itself. `AUTH_PRINCIPAL_CACHE_SECONDS` bounds
how long an entry may live (a backstop for a change made outside the application, e.g. in SQL).

The cached user is loaded without its password hash (deferred: read from the database on the
rare paths that check a password), so no hash is ever copied into the cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from apps.core.generations import GenerationalCache

from .models import Membership, User

CACHE = GenerationalCache("principal:v2", timeout_setting="AUTH_PRINCIPAL_CACHE_SECONDS")
ENTRY = "principal"


@dataclass(frozen=True)
class Principal:
    user: User
    memberships: tuple[Membership, ...]


def enabled() -> bool:
    return CACHE.enabled


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
    their organisations), or None; from the cache unless it changed since it was cached."""
    return CACHE.get_or_load(public_id, ENTRY, lambda: _load(public_id))


def invalidate_users(public_ids: Iterable[Any]) -> None:
    """Make cached principals of these users (by `public_id`) stale, now and after the commit."""
    CACHE.invalidate(public_ids)


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
