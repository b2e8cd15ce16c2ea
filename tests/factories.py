"""factory_boy factories and small helpers to act as a user, a member or an API key in tests."""

from __future__ import annotations

from typing import Any

import factory
from django.utils import timezone

from apps.accounts.models import ApiKey, Invitation, Membership, Organisation, Role, User
from apps.accounts.tokens import (
    TokenPair,
    api_key_new,
    invitation_token_new,
    token_pair_issue,
)

DEFAULT_PASSWORD = "a-long-Passphrase-for-tests-42"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    full_name = factory.Faker("name")
    is_active = True
    email_verified_at = factory.LazyFunction(timezone.now)

    @factory.post_generation
    def password(obj: User, create: bool, extracted: str | None, **kwargs: Any) -> None:
        obj.set_password(extracted or DEFAULT_PASSWORD)
        if create:
            # Saved without counting as a password change: a new user's tokens start at 0.
            obj._password = None
            obj.save(update_fields=["password"])


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Organisation {n}")
    plan = "free"


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organisation = factory.SubFactory(OrganisationFactory)
    role = Role.MEMBER


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """An API key; the full key (never stored) is on the instance as `raw_key`."""

    class Meta:
        model = ApiKey

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"key {n}")
    role = Role.MEMBER
    prefix = ""
    key_hash = ""

    @classmethod
    def _create(cls, model_class: type[ApiKey], *args: Any, **kwargs: Any) -> ApiKey:
        raw, prefix, key_hash = api_key_new()
        kwargs.update(prefix=prefix, key_hash=key_hash)
        api_key = super()._create(model_class, *args, **kwargs)
        api_key.raw_key = raw
        return api_key


class InvitationFactory(factory.django.DjangoModelFactory):
    """A pending invitation; the token of its link is on the instance as `token`."""

    class Meta:
        model = Invitation

    organisation = factory.SubFactory(OrganisationFactory)
    email = factory.Sequence(lambda n: f"invitee{n}@example.com")
    role = Role.MEMBER
    expires_at = factory.LazyFunction(lambda: timezone.now() + timezone.timedelta(days=7))
    token_hash = ""
    sent_count = 1

    @classmethod
    def _create(cls, model_class: type[Invitation], *args: Any, **kwargs: Any) -> Invitation:
        import uuid

        invitation_id = uuid.uuid4()
        token, token_hash = invitation_token_new(invitation_id=str(invitation_id))
        kwargs.update(id=invitation_id, token_hash=token_hash)
        invitation = super()._create(model_class, *args, **kwargs)
        invitation.token = token
        return invitation


def member(role: str = Role.MEMBER, organisation: Organisation | None = None, **user: Any):
    """A user who belongs to `organisation` (a new one if not given) with `role`."""
    return MembershipFactory(
        role=role,
        organisation=organisation or OrganisationFactory(),
        user=UserFactory(**user),
    )


def tokens_for(user: User, organisation: Organisation | None = None) -> TokenPair:
    return token_pair_issue(user=user, organisation=organisation)


def bearer(user: User, organisation: Organisation | None = None) -> dict[str, str]:
    """Request headers (for the test client) authenticating as `user`."""
    return {"HTTP_AUTHORIZATION": f"Bearer {tokens_for(user, organisation).access}"}


def api_key_header(api_key: ApiKey) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Api-Key {api_key.raw_key}"}
