"""Refresh tokens are recorded by jti, user and expiry, never by their text, and the admin pages
of the recorded tokens show no token (a staff user allowed to view them is not given credentials).
"""

from __future__ import annotations

import datetime as dt
import importlib
import uuid

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.accounts.models import Role
from apps.accounts.tokens import LexisRefreshToken
from tests.factories import UserFactory, member, tokens_for


def refresh(client, token):
    return client.post("/api/v1/auth/token/refresh/", {"refresh": token}, format="json")


@pytest.fixture
def user(db):
    return member(Role.OWNER).user


@pytest.fixture
def token_viewer(client, db):
    """A staff user who may only view the recorded tokens, signed in to the admin."""
    operator = UserFactory(email="ops@example.com", is_staff=True)
    operator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_outstandingtoken", "view_blacklistedtoken"])
    )
    client.force_login(operator)
    return client


def test_issued_and_rotated_refresh_tokens_are_recorded_without_their_text(api_client, user):
    pair = tokens_for(user)

    rotated = refresh(api_client, pair.refresh)
    reused = refresh(api_client, pair.refresh)

    assert rotated.status_code == 200
    assert reused.status_code == 401  # rotation and reuse detection go by jti
    assert OutstandingToken.objects.filter(user=user).count() == 2
    assert set(OutstandingToken.objects.values_list("token", flat=True)) == {""}


def test_a_token_first_seen_at_sign_out_is_recorded_without_its_text(api_client, user):
    token = LexisRefreshToken()  # signed by us but never recorded (e.g. issued before an upgrade)
    token["user_id"] = str(user.public_id)
    token["ver"] = user.token_version

    response = api_client.post("/api/v1/auth/logout/", {"refresh": str(token)}, format="json")

    assert response.status_code == 204
    outstanding = OutstandingToken.objects.get(jti=token["jti"])
    assert outstanding.token == ""
    assert outstanding.user == user
    assert BlacklistedToken.objects.filter(token=outstanding).exists()


def test_the_token_admin_pages_show_no_token_to_a_staff_viewer(token_viewer, api_client, user):
    pair = tokens_for(user)
    assert refresh(api_client, pair.refresh).status_code == 200  # pair.refresh is blacklisted
    live = tokens_for(user)
    outstanding = OutstandingToken.objects.get(jti=LexisRefreshToken(live.refresh)["jti"])
    # A row written before the fix (its text not yet blanked) is not shown either.
    OutstandingToken.objects.filter(pk=outstanding.pk).update(token=live.refresh)
    blacklisted = BlacklistedToken.objects.get()

    pages = [
        "/admin/token_blacklist/outstandingtoken/",
        f"/admin/token_blacklist/outstandingtoken/{outstanding.pk}/change/",
        "/admin/token_blacklist/blacklistedtoken/",
        f"/admin/token_blacklist/blacklistedtoken/{blacklisted.pk}/change/",
    ]
    for url in pages:
        response = token_viewer.get(url)
        body = response.content.decode()
        assert response.status_code == 200, url
        assert outstanding.jti in body or blacklisted.token.jti in body, url
        assert live.refresh not in body, url
        assert live.refresh.split(".")[1] not in body, url  # not even the payload part
        assert pair.refresh.split(".")[1] not in body, url


def test_the_token_admin_pages_are_read_only_even_for_a_superuser(admin_client, user):
    pair = tokens_for(user)
    outstanding = OutstandingToken.objects.get()

    form = admin_client.get(f"/admin/token_blacklist/outstandingtoken/{outstanding.pk}/change/")
    posted = admin_client.post(
        f"/admin/token_blacklist/outstandingtoken/{outstanding.pk}/change/",
        {"jti": "changed", "token": "x", "expires_at": "2000-01-01 00:00:00"},
    )

    assert form.status_code == 200
    assert 'name="token"' not in form.content.decode()
    assert pair.refresh.split(".")[1] not in form.content.decode()
    assert posted.status_code == 403
    assert admin_client.get("/admin/token_blacklist/outstandingtoken/add/").status_code == 403
    outstanding.refresh_from_db()
    assert outstanding.jti != "changed"


def test_the_migration_blanks_the_text_of_tokens_recorded_before_it(db, user):
    migration = importlib.import_module(
        "apps.accounts.migrations.0002_blank_outstanding_token_text"
    )
    old = [
        OutstandingToken.objects.create(
            user=user,
            jti=uuid.uuid4().hex,
            token=f"header.payload-{n}.signature",
            created_at=timezone.now(),
            expires_at=timezone.now() + dt.timedelta(days=1),
        )
        for n in range(3)
    ]

    migration.blank_token_text(global_apps, None)

    assert [OutstandingToken.objects.get(pk=row.pk).token for row in old] == ["", "", ""]
    assert OutstandingToken.objects.filter(user=user).count() == 3  # jti, user, expiry kept
