"""The principal cache (apps.accounts.principals): fewer queries, never a stale decision.

Each revocation test first makes a request so that the caller's user and memberships are cached,
then changes something the way the application (or an operator) does, and checks that the very
next request already sees the change.
"""

from __future__ import annotations

import pickle

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts import principals
from apps.accounts.models import Role
from apps.accounts.network import RequestMeta
from apps.accounts.services import (
    membership_change_role,
    membership_remove,
    user_deactivate,
    user_tokens_revoke,
)
from tests.factories import MembershipFactory, bearer, member

JOBS = "/api/v1/jobs"
ME = "/api/v1/me/"


def _warm(api_client, headers) -> None:
    response = api_client.get(ME, **headers)
    assert response.status_code == 200
    assert (
        cache.get(principals.CACHE.entry_key(response.json()["id"], principals.ENTRY)) is not None
    )


def test_a_cached_request_reads_neither_the_user_nor_the_membership(api_client, db):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    api_client.get(JOBS, **headers)

    with CaptureQueriesContext(connection) as queries:
        response = api_client.get(JOBS, **headers)

    assert response.status_code == 200
    tables = " ".join(query["sql"] for query in queries)
    assert "accounts_user" not in tables
    assert "accounts_membership" not in tables


def test_the_cached_entry_holds_no_password_hash(api_client, db):
    owner = member(Role.OWNER)
    _warm(api_client, bearer(owner.user))

    entry = cache.get(principals.CACHE.entry_key(owner.user.public_id, principals.ENTRY))
    blob = pickle.dumps(entry)

    assert owner.user.password.encode() not in blob
    assert b"argon2" not in blob


@pytest.mark.parametrize("how", ["service", "operator"])
def test_deactivation_applies_to_the_next_request(api_client, db, how):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    _warm(api_client, headers)

    if how == "service":
        user_deactivate(user=owner.user, actor=None, force=True, meta=RequestMeta())
    else:  # the admin's change form saves the user (post_save)
        owner.user.is_active = False
        owner.user.save()

    response = api_client.get(ME, **headers)
    assert response.status_code == 401


def test_a_token_version_bump_by_update_applies_to_the_next_request(api_client, db):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    _warm(api_client, headers)

    user_tokens_revoke(user=owner.user)  # QuerySet.update(): no signal, explicit invalidation

    response = api_client.get(ME, **headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"token_revoked", "token_not_valid"}


def test_a_removed_member_loses_the_organisation_at_once(api_client, db):
    owner = member(Role.OWNER)
    colleague = member(Role.MEMBER, organisation=owner.organisation)
    MembershipFactory(user=colleague.user, role=Role.OWNER)  # still belongs somewhere
    headers = bearer(colleague.user, owner.organisation)
    assert api_client.get(JOBS, **headers).status_code == 200

    membership_remove(actor=owner, membership=colleague, meta=RequestMeta())

    # Removal revokes the tokens too; a fresh token must not see the organisation either.
    assert api_client.get(JOBS, **headers).status_code == 401
    fresh = bearer(colleague.user)
    response = api_client.get(JOBS, HTTP_X_ORGANISATION=str(owner.organisation.id), **fresh)
    assert response.status_code == 404


def test_a_role_change_applies_to_the_next_request(api_client, db):
    owner = member(Role.OWNER)
    colleague = member(Role.ADMIN, organisation=owner.organisation)
    headers = bearer(colleague.user)
    assert api_client.get("/api/v1/api-keys/", **headers).status_code == 200

    membership_change_role(actor=owner, membership=colleague, role=Role.VIEWER, meta=RequestMeta())

    response = api_client.post("/api/v1/api-keys/", {"name": "ci"}, format="json", **headers)
    assert response.status_code == 403


def test_a_deactivated_organisation_applies_to_the_next_request(api_client, db):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    assert api_client.get(JOBS, **headers).status_code == 200

    owner.organisation.is_active = False
    owner.organisation.save()

    assert api_client.get(JOBS, **headers).status_code == 403


def test_an_entry_read_before_a_concurrent_commit_is_never_used(db, monkeypatch):
    """The race a plain delete would lose: a reader loads the old row, the writer commits and
    invalidates, then the reader stores what it loaded. Its entry carries the old generation."""
    owner = member(Role.OWNER)
    public_id = str(owner.user.public_id)
    load = principals._load
    loads = []

    def load_then_commit_elsewhere(pid):
        loaded = load(pid)
        loads.append(pid)
        principals.CACHE._replace_generations([pid])  # what the writer's on_commit does meanwhile
        return loaded

    monkeypatch.setattr(principals, "_load", load_then_commit_elsewhere)
    principals.principal_get(public_id)
    monkeypatch.setattr(principals, "_load", lambda pid: loads.append(pid) or load(pid))
    principals.principal_get(public_id)

    assert loads == [public_id, public_id]  # the second read went to the database


def test_invalidation_is_repeated_after_the_commit(db, django_capture_on_commit_callbacks):
    owner = member(Role.OWNER)
    key = principals.CACHE.generation_key(owner.user.public_id)
    principals.principal_get(owner.user.public_id)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        principals.invalidate_users([owner.user.public_id])
        during = cache.get(key)
    for callback in callbacks:
        callback()

    assert during is not None
    assert cache.get(key) not in (None, during)


def test_an_unreachable_cache_falls_back_to_the_database(api_client, db, monkeypatch):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)

    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "get_many", down)
    monkeypatch.setattr(cache, "set", down)

    response = api_client.get(JOBS, **headers)
    assert response.status_code == 200


def test_the_cache_can_be_turned_off(api_client, db, settings):
    settings.AUTH_PRINCIPAL_CACHE_SECONDS = 0
    owner = member(Role.OWNER)
    headers = bearer(owner.user)

    assert api_client.get(JOBS, **headers).status_code == 200
    assert cache.get(principals.CACHE.entry_key(owner.user.public_id, principals.ENTRY)) is None
    with CaptureQueriesContext(connection) as queries:
        api_client.get(JOBS, **headers)
    assert "accounts_membership" in " ".join(query["sql"] for query in queries)


def test_an_unknown_user_in_a_valid_token_is_refused(api_client, db):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    _warm(api_client, headers)

    owner.user.delete()

    assert api_client.get(ME, **headers).status_code == 401


# ---- Verified access tokens (apps.accounts.authentication.validated_tokens) ----------------------
def test_a_token_is_verified_once_per_process(api_client, db, monkeypatch):
    from rest_framework_simplejwt.backends import TokenBackend

    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    decode = TokenBackend.decode
    calls = []
    monkeypatch.setattr(
        TokenBackend, "decode", lambda self, *a, **k: calls.append(1) or decode(self, *a, **k)
    )

    for _ in range(3):
        assert api_client.get(ME, **headers).status_code == 200

    assert len(calls) == 1


def test_a_verified_token_still_expires():
    import time

    from apps.accounts.authentication import _ValidatedTokens

    tokens = _ValidatedTokens()
    tokens.put(b"fresh", {"exp": time.time() + 60})
    tokens.put(b"stale", {"exp": time.time() - 60})

    assert tokens.get(b"fresh") is not None
    assert tokens.get(b"stale") is None
    assert tokens.get(b"never-seen") is None


def test_the_verified_token_memory_is_bounded():
    import time

    from apps.accounts.authentication import _ValidatedTokens

    tokens = _ValidatedTokens(size=2)
    for raw in (b"a", b"b", b"c"):
        tokens.put(raw, {"exp": time.time() + 60})

    assert tokens.get(b"a") is None
    assert tokens.get(b"b") is not None and tokens.get(b"c") is not None


def test_a_cached_token_is_still_refused_once_revoked(api_client, db):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    assert api_client.get(ME, **headers).status_code == 200

    user_tokens_revoke(user=owner.user)

    assert api_client.get(ME, **headers).status_code == 401


def test_a_tampered_copy_of_a_verified_token_is_refused(api_client, db):
    owner = member(Role.OWNER)
    headers = bearer(owner.user)
    assert api_client.get(ME, **headers).status_code == 200
    token = headers["HTTP_AUTHORIZATION"]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")

    assert api_client.get(ME, HTTP_AUTHORIZATION=tampered).status_code == 401
