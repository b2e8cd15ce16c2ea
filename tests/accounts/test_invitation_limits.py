"""Invitation emails are bounded: a resend cooldown and a cap per invitation, and a limit per
address across organisations (anyone can register an organisation, name it anything and invite
any address, so without these the platform would mail-bomb an inbox on request)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import override_settings
from django.utils import timezone

from apps.accounts.models import Invitation, Role
from apps.accounts.services import invitation_resend_by_operator
from apps.notifications.models import EmailOutbox
from tests.factories import InvitationFactory, UserFactory, bearer, member

VICTIM = "victim@example.org"

pytestmark = pytest.mark.django_db


def invite(client, actor, email=VICTIM):
    return client.post(
        "/api/v1/invitations/", {"email": email, "role": "viewer"}, format="json", **bearer(actor)
    )


def resend(client, actor, invitation_id):
    return client.post(f"/api/v1/invitations/{invitation_id}/resend/", **bearer(actor))


def invitation_emails(address=VICTIM) -> int:
    return EmailOutbox.objects.filter(template="invitation", recipients__contains=[address]).count()


def sent_long_ago(invitation_id) -> None:
    """Move the invitation's last send out of the cooldown."""
    Invitation.objects.filter(pk=invitation_id).update(
        last_sent_at=timezone.now() - dt.timedelta(days=1)
    )


def test_resending_at_once_is_refused_and_queues_nothing(api_client):
    """The review's reproduction: 40 resends in a row sent 41 emails to one address."""
    owner = member(Role.OWNER)
    created = invite(api_client, owner.user)

    answers = [resend(api_client, owner.user, created.json()["id"]) for _ in range(40)]

    assert created.status_code == 201
    assert {a.status_code for a in answers} == {429}
    body = answers[0].json()["error"]
    assert body["code"] == "invitation_resend_too_soon"
    wait = body["details"]["retry_after_seconds"]
    assert 0 < wait <= 300
    assert answers[0]["Retry-After"] == str(wait)
    assert body["request_id"]
    assert invitation_emails() == 1
    assert Invitation.objects.get().sent_count == 1


@override_settings(INVITATION_RESEND_COOLDOWN_SECONDS=60)
def test_a_resend_after_the_cooldown_is_sent(api_client):
    owner = member(Role.OWNER)
    invitation = InvitationFactory(organisation=owner.organisation, email=VICTIM)
    Invitation.objects.filter(pk=invitation.pk).update(
        last_sent_at=timezone.now() - dt.timedelta(seconds=61)
    )

    response = resend(api_client, owner.user, invitation.pk)

    assert response.status_code == 200
    assert response.json()["sent_count"] == 2
    assert invitation_emails() == 1


@override_settings(INVITATION_SENDS_MAX=3)
def test_an_invitation_is_sent_at_most_invitation_sends_max_times(api_client):
    owner = member(Role.OWNER)
    invitation_id = invite(api_client, owner.user).json()["id"]
    answers = []
    for _ in range(3):
        sent_long_ago(invitation_id)
        answers.append(resend(api_client, owner.user, invitation_id))

    assert [a.status_code for a in answers] == [200, 200, 409]
    error = answers[-1].json()["error"]
    assert error["code"] == "invitation_send_limit"
    assert error["details"] == {"limit": 3}
    assert invitation_emails() == 3


@override_settings(INVITATION_RATE_PER_ADDRESS="2/d")
def test_an_address_gets_at_most_its_invitations_across_organisations(api_client):
    """Revoking and inviting again, or inviting from other organisations, is counted too; the
    inviter is told (429) rather than shown an invitation that was never emailed."""
    first, second, third = member(Role.OWNER), member(Role.OWNER), member(Role.OWNER)
    created = invite(api_client, first.user)
    api_client.delete(f"/api/v1/invitations/{created.json()['id']}/", **bearer(first.user))
    again = invite(api_client, first.user)
    refused = invite(api_client, second.user)
    other_address = invite(api_client, third.user, email="someone.else@example.org")

    assert [created.status_code, again.status_code] == [201, 201]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "invitation_address_limit"
    assert int(refused["Retry-After"]) == error["details"]["retry_after_seconds"] > 0
    assert VICTIM not in error["message"]
    assert not Invitation.objects.filter(organisation=second.organisation).exists()
    assert invitation_emails() == 2
    assert other_address.status_code == 201


@pytest.mark.parametrize(
    ("address", "inbox"),
    [
        ("Victim+news@Example.org", "victim@example.org"),
        ("v.ic.tim+1@googlemail.com", "victim@gmail.com"),
        ("V.ictim@gmail.com", "victim@gmail.com"),
        ("first.last@example.org", "first.last@example.org"),  # dots count elsewhere
        ("+only@example.org", "+only@example.org"),
    ],
)
def test_the_inbox_an_address_reaches(address, inbox):
    from apps.accounts.ratelimit import mailbox

    assert mailbox(address) == inbox


@override_settings(INVITATION_RATE_PER_ADDRESS="2/d")
def test_plus_tags_and_capitals_reach_the_same_inbox_and_count_together(api_client):
    owners = [member(Role.OWNER) for _ in range(3)]
    answers = [
        invite(api_client, owner.user, email=address)
        for owner, address in zip(
            owners,
            ["victim+1@example.org", "Victim+news@Example.org", "victim@example.org"],
            strict=True,
        )
    ]

    assert [a.status_code for a in answers] == [201, 201, 429]


@override_settings(INVITATION_RATE_PER_ADDRESS="2/d")
def test_resends_count_against_the_address(api_client):
    owner = member(Role.OWNER)
    invitation_id = invite(api_client, owner.user).json()["id"]
    sent_long_ago(invitation_id)
    resent = resend(api_client, owner.user, invitation_id)
    sent_long_ago(invitation_id)
    refused = resend(api_client, owner.user, invitation_id)

    assert resent.status_code == 200
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "invitation_address_limit"
    assert Invitation.objects.get().sent_count == 2
    assert invitation_emails() == 2


@override_settings(INVITATION_RATE_PER_ADDRESS="2/d", INVITATION_SENDS_MAX=1)
def test_an_operator_resend_is_not_held_to_the_limits_but_is_counted(api_client):
    owner = member(Role.OWNER)
    invitation_id = invite(api_client, owner.user).json()["id"]  # 1 of 2 for the address
    invitation = Invitation.objects.get(pk=invitation_id)

    invitation_resend_by_operator(invitation=invitation, operator=UserFactory())  # 2 of 2
    later = invite(api_client, member(Role.OWNER).user)

    invitation.refresh_from_db()
    assert invitation.sent_count == 2
    assert later.status_code == 429
    assert invitation_emails() == 2


@override_settings(
    INVITATION_RESEND_COOLDOWN_SECONDS=0, INVITATION_SENDS_MAX=0, INVITATION_RATE_PER_ADDRESS=""
)
def test_each_limit_can_be_turned_off(api_client):
    owner = member(Role.OWNER)
    invitation_id = invite(api_client, owner.user).json()["id"]

    answers = [resend(api_client, owner.user, invitation_id).status_code for _ in range(6)]

    assert answers == [200] * 6
    assert invitation_emails() == 7
