"""Registration, email verification, passwords, profile and deactivation."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core import crypto
from apps.core.exceptions import ConflictError

from .. import tasks
from ..exceptions import InvalidLink
from ..models import (
    Membership,
    Organisation,
    Role,
    User,
    normalise_email,
)
from ..network import RequestMeta
from ..ratelimit import guard_attempt, guard_email_request, guard_hit
from ..tokens import (
    TokenPair,
    email_verification_read,
    email_verification_token,
    password_reset_check,
    password_reset_split,
    password_reset_token,
    token_pair_issue,
)
from ._common import (
    active_owners_locked,
    blacklist_refresh_tokens,
    check_password_strength,
    default_organisation,
    departed_member_grants_revoke,
    enqueue_email,
    public_link,
    user_tokens_revoke,
)

logger = logging.getLogger(__name__)


# ---- Registration and email verification ------------------------------------------------------
# The public requests that email an address answer the same for every address, and take the same
# time: the request validates, counts and publishes; what depends on the account runs in the email
# worker (apps/accounts/tasks.py), which the client does not wait for.
def _hand_to_worker(task: Any, inline: Callable[[], object], **kwargs: Any) -> None:
    """Publish the account-dependent half of a public request.

    If the broker refuses, that half runs here instead: the request still does what it promised,
    and only while the broker is down does its time depend on the address (a WARNING says so).
    """
    try:
        task.apply_async(kwargs=kwargs, queue=tasks.QUEUE)
    except (KombuOperationalError, RedisError, OSError):
        logger.warning("%s not published: done in the request", task.name, exc_info=True)
        inline()


def _send_verification(user: User) -> None:
    enqueue_email(
        "verify_email",
        user.email,
        {
            "full_name": user.full_name,
            "email": user.email,
            "verify_url": public_link("/verify-email", email_verification_token(user=user)),
            "valid_hours": settings.EMAIL_VERIFICATION_MAX_AGE // 3600,
        },
    )


def user_register(
    *, email: str, password: str, full_name: str, organisation_name: str, meta: RequestMeta
) -> None:
    """Register an address: a new, unverified user owning a new organisation, who is emailed a
    verification link; an address that has an account is emailed a notice instead.

    The answer and its time are the same either way, so the endpoint does not tell who has an
    account: the request checks the password and hashes it (the costly step) for every address,
    then hands the rest to the email worker (`registration_complete`), sealed, since it holds the
    password hash. Registrations count per address on their own (never against the address's
    password resets); over that limit the notice is not sent (an account is created once, so its
    one email is no flood).
    """
    account = normalise_email(email)
    notify = guard_email_request(guard="registration", account=account, ip=meta.ip)
    check_password_strength(password, User(email=account, full_name=full_name))
    registration: dict[str, Any] = {
        "email": account,
        "password_hash": make_password(password),
        "full_name": full_name,
        "organisation_name": organisation_name,
        "notify": notify,
    }
    _hand_to_worker(
        tasks.register,
        inline=lambda: registration_complete(**registration, meta=meta),
        sealed=request_seal(registration, meta=meta),
    )


def request_seal(fields: dict[str, Any], *, meta: RequestMeta) -> str:
    """A public request's fields as its task carries them: encrypted (FIELD_ENCRYPTION_KEYS), so
    the broker, Flower (which shows task arguments), a dead letter or a log line never holds the
    address, the client's IP and user agent, or a registration's password hash in the clear."""
    return crypto.encrypt(json.dumps({**fields, "meta": dataclasses.asdict(meta)}))


def request_open(sealed: str) -> dict[str, Any]:
    """The fields `request_seal` sealed, `meta` as a RequestMeta. Raises
    `apps.core.crypto.DecryptionError` if no key of this process opens it."""
    fields = json.loads(crypto.decrypt(sealed))
    fields["meta"] = RequestMeta(**fields["meta"])
    return fields


def registration_complete(
    *,
    email: str,
    password_hash: str,
    full_name: str,
    organisation_name: str,
    notify: bool,
    meta: RequestMeta,
) -> User | None:
    """The worker's half of `user_register`: create the account, or email its owner a notice.

    Returns the new user (None when the address had an account). A message delivered twice finds
    the account it created (the same salted password hash) and does nothing more.
    """
    existing = User.objects.filter(email=email).first()
    if existing is None:
        try:
            with transaction.atomic():
                user = User(email=email, full_name=full_name, password=password_hash)
                user.save()
                organisation = Organisation.objects.create(
                    name=organisation_name, plan=settings.RATE_LIMIT_DEFAULT_PLAN
                )
                Membership.objects.create(user=user, organisation=organisation, role=Role.OWNER)
                audit_record(
                    action=AuditAction.USER_REGISTERED,
                    actor=user,
                    organisation=organisation,
                    target=user,
                    meta=meta,
                )
                audit_record(
                    action=AuditAction.ORGANISATION_CREATED,
                    actor=user,
                    organisation=organisation,
                    target=organisation,
                    meta=meta,
                )
                _send_verification(user)
            return user
        except IntegrityError:  # registered concurrently with the same address
            existing = User.objects.filter(email=email).first()
    if existing is not None and existing.password == password_hash:
        return None  # this very registration, delivered again
    if notify:
        enqueue_email(
            "account_exists",
            email,
            {"email": email, "reset_url": f"{settings.PUBLIC_BASE_URL}/reset-password"},
        )
    return None


def email_verification_resend(*, email: str, meta: RequestMeta) -> None:
    """Email a new verification link if the address has an unverified account (same answer, and
    time, if not: the email worker looks the address up). Counted per address on its own; over
    that limit nothing is sent."""
    account = normalise_email(email)
    if not guard_email_request(guard="verification_resend", account=account, ip=meta.ip):
        return
    _hand_to_worker(
        tasks.send_verification,
        inline=lambda: verification_send(email=account, meta=meta),
        sealed=request_seal({"email": account}, meta=meta),
    )


def verification_send(*, email: str, meta: RequestMeta) -> None:
    """The worker's half of `email_verification_resend`."""
    user = User.objects.filter(email=email, is_active=True, email_verified_at=None).first()
    if user is not None:
        _send_verification(user)


def user_verify_email(*, token: str, meta: RequestMeta) -> User:
    data = email_verification_read(token)
    if data is None:
        raise InvalidLink()
    try:
        user = User.objects.filter(public_id=data["u"], email=data["e"], is_active=True).first()
    except DjangoValidationError:
        user = None
    if user is None:
        raise InvalidLink()
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        audit_record(
            action=AuditAction.EMAIL_VERIFIED,
            actor=user,
            organisation=default_organisation(user),
            target=user,
            meta=meta,
        )
    return user


# ---- Passwords --------------------------------------------------------------------------------
def _notify_password_changed(user: User) -> None:
    enqueue_email(
        "password_changed",
        user.email,
        {
            "full_name": user.full_name,
            "email": user.email,
            "reset_url": f"{settings.PUBLIC_BASE_URL}/reset-password",
        },
    )


def password_reset_request(*, email: str, meta: RequestMeta) -> None:
    """Email a one-time reset link if the address has an active account; answer the same, in the
    same time, if not (the email worker looks the address up: `password_reset_send`).

    Over the address's limit nothing is sent and the answer is the same (see
    `guard_email_request`); over the client IP's, 429.
    """
    account = normalise_email(email)
    if not guard_email_request(guard="password_reset", account=account, ip=meta.ip):
        return
    _hand_to_worker(
        tasks.send_password_reset,
        inline=lambda: password_reset_send(email=account, meta=meta),
        sealed=request_seal({"email": account}, meta=meta),
    )


@transaction.atomic
def password_reset_send(*, email: str, meta: RequestMeta) -> None:
    """The worker's half of `password_reset_request`. One transaction: a failure after the email
    was queued (its audit row) rolls the email back too, so the task's retry sends one link, not
    two."""
    user = User.objects.filter(email=email, is_active=True).first()
    if user is None or not user.has_usable_password():
        return
    enqueue_email(
        "password_reset",
        user.email,
        {
            "full_name": user.full_name,
            "email": user.email,
            "reset_url": public_link("/reset-password", password_reset_token(user=user)),
            "valid_minutes": settings.PASSWORD_RESET_TIMEOUT // 60,
        },
    )
    audit_record(
        action=AuditAction.PASSWORD_RESET_REQUESTED,
        organisation=default_organisation(user),
        target=user,
        meta=meta,
    )


@transaction.atomic
def password_reset_confirm(*, token: str, new_password: str, meta: RequestMeta) -> User:
    """Set a new password from a reset link; every existing session of the user ends."""
    parts = password_reset_split(token)
    if parts is None:
        raise InvalidLink()
    public_hex, generator_token = parts
    try:
        public_id = uuid.UUID(hex=public_hex)
    except ValueError:
        raise InvalidLink() from None
    user = User.objects.select_for_update().filter(public_id=public_id, is_active=True).first()
    if user is None or not password_reset_check(user=user, generator_token=generator_token):
        raise InvalidLink()
    check_password_strength(new_password, user)
    user.set_password(new_password)
    if user.email_verified_at is None:  # the link proved the address
        user.email_verified_at = timezone.now()
    user.save(update_fields=["password", "email_verified_at"])
    blacklist_refresh_tokens(user)
    audit_record(
        action=AuditAction.PASSWORD_RESET,
        actor=user,
        organisation=default_organisation(user),
        target=user,
        meta=meta,
    )
    _notify_password_changed(user)
    return user


def _confirm_password(user: User, password: str, *, field: str, meta: RequestMeta) -> None:
    """Check a signed-in user's password under the sign-in guard: a stolen token must not give
    unlimited guesses (wrong answers count against the account and the address)."""
    with guard_attempt(guard="login", account=user.email, ip=meta.ip):
        wrong = not user.check_password(password)
        if wrong:
            guard_hit(guard="login", account=user.email, ip=meta.ip)
    if wrong:
        raise DjangoValidationError({field: ["The password is wrong."]})


def password_change(
    *,
    user: User,
    current_password: str,
    new_password: str,
    organisation_id: str | None = None,
    meta: RequestMeta,
) -> TokenPair:
    """Change the password; every other session ends and the caller gets a fresh pair."""
    _confirm_password(user, current_password, field="current_password", meta=meta)
    check_password_strength(new_password, user)
    with transaction.atomic():
        organisation = (
            Organisation.objects.filter(id=organisation_id, memberships__user=user).first()
            if organisation_id
            else None
        )
        _password_replace(user, new_password, organisation=organisation, meta=meta)
        pair = token_pair_issue(user=user, organisation=organisation)
    return pair


def password_change_in_session(
    *, user: User, current_password: str, new_password: str, meta: RequestMeta
) -> User:
    """The admin's own password change (`/admin/password_change/`), as the API's: the current
    password is checked under the sign-in guard, and every token and session of the user ends
    (the view keeps the caller's own session with `update_session_auth_hash`)."""
    _confirm_password(user, current_password, field="current_password", meta=meta)
    check_password_strength(new_password, user)
    with transaction.atomic():
        _password_replace(user, new_password, organisation=None, meta=meta)
    return user


def password_set_by_operator(
    *, user: User, new_password: str | None, actor: User, meta: RequestMeta
) -> User:
    """An operator sets another account's password in the admin (`None`: password sign-in
    disabled). As any password change: every session and token of the user ends (User.save
    raises the token version), refresh tokens are blacklisted, the change is recorded with the
    operator as actor and the user is emailed. `user` is updated in place (the admin's view
    keeps the operator's own session when it was their own account)."""
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        if new_password is None:
            locked.set_unusable_password()
        else:
            locked.set_password(new_password)
        locked.save(update_fields=["password"])
        _password_changed(
            locked,
            actor=actor,
            organisation=None,
            meta=meta,
            metadata={"via": "admin", "password_sign_in": new_password is not None},
        )
    user.password, user.token_version = locked.password, locked.token_version
    return user


def _password_replace(
    user: User, new_password: str, *, organisation: Organisation | None, meta: RequestMeta
) -> None:
    user.set_password(new_password)
    # Only the password (User.save adds token_version): `user` was loaded when the request
    # authenticated, and writing its other fields back would undo a change made since, such
    # as an operator's deactivation.
    user.save(update_fields=["password"])
    _password_changed(user, actor=user, organisation=organisation, meta=meta)


def _password_changed(
    user: User,
    *,
    actor: User,
    organisation: Organisation | None,
    meta: RequestMeta,
    metadata: dict[str, Any] | None = None,
) -> None:
    """What follows any new password (its save raised the token version): refresh tokens
    blacklisted, the change recorded, the user emailed."""
    blacklist_refresh_tokens(user)
    audit_record(
        action=AuditAction.PASSWORD_CHANGED,
        actor=actor,
        organisation=organisation or default_organisation(user),
        target=user,
        meta=meta,
        metadata=metadata,
    )
    _notify_password_changed(user)


# ---- Profile and deactivation -----------------------------------------------------------------
def user_update_profile(*, user: User, full_name: str | None = None, meta: RequestMeta) -> User:
    changed = []
    if full_name is not None and full_name != user.full_name:
        user.full_name = full_name
        changed.append("full_name")
    if changed:
        user.save(update_fields=changed)
        audit_record(
            action=AuditAction.PROFILE_UPDATED,
            actor=user,
            target=user,
            meta=meta,
            metadata={"fields": changed},
        )
    return user


def _sole_owner_of_shared_organisations(user: User) -> list[Organisation]:
    """The organisations with other members that would be left without an active owner.

    Owner rows are locked (in organisation order) until the deactivation commits: two owners
    deactivating at once would otherwise each see the other as the remaining owner.
    """
    owned = Organisation.objects.filter(
        memberships__user=user, memberships__role=Role.OWNER
    ).order_by("id")
    blocked = []
    for organisation in owned:
        other_owners = active_owners_locked(organisation.id) - {user.pk}
        others = Membership.objects.filter(organisation=organisation).exclude(user=user).exists()
        if not other_owners and others:
            blocked.append(organisation)
    return blocked


@transaction.atomic
def user_deactivate(
    *,
    user: User,
    actor: User | None,
    password: str | None = None,
    force: bool = False,
    meta: RequestMeta,
) -> User:
    """Deactivate an account: it can no longer sign in and every token of it stops working; the
    API keys it created and its pending invitations, in every organisation, are revoked.

    A user deactivating themselves confirms with their password and must first hand over any
    organisation they alone own that has other members; operators (`force`) may skip both.
    """
    if password is not None:
        _confirm_password(user, password, field="password", meta=meta)
    if not force:
        blocked = _sole_owner_of_shared_organisations(user)
        if blocked:
            raise ConflictError(
                "Make someone else an owner of your organisations first.",
                code="sole_owner",
                details={"organisations": [str(o.id) for o in blocked]},
            )
    user.is_active = False
    user.save(update_fields=["is_active"])
    user_tokens_revoke(user=user)
    audit_record(
        action=AuditAction.USER_DEACTIVATED,
        actor=actor if actor is not None else "system",
        target=user,
        meta=meta,
        metadata={"by_operator": bool(force)},
    )
    departed_member_grants_revoke(
        user=user, organisation_id=None, actor=actor, reason="user_deactivated", meta=meta
    )
    return user


@transaction.atomic
def user_reactivate(*, user: User, actor: User | None, meta: RequestMeta) -> User:
    """Let a deactivated account sign in again (an operator's decision).

    Every token issued before now is revoked again, whichever way the account was deactivated:
    one switched off outside `user_deactivate` (in SQL, in a shell) never had its tokens revoked,
    and they must not come back to life with it. What deactivation revoked (API keys,
    invitations) stays revoked.
    """
    if user.is_active:
        return user
    user.is_active = True
    user.save(update_fields=["is_active"])
    user_tokens_revoke(user=user)
    audit_record(
        action=AuditAction.USER_REACTIVATED,
        actor=actor if actor is not None else "system",
        target=user,
        meta=meta,
    )
    return user


@transaction.atomic
def user_delete(*, user: User, actor: User | None, meta: RequestMeta) -> None:
    """Delete an account (operators, in the admin).

    The API keys it created and its pending invitations are revoked first: the delete itself only
    clears their author, and they would go on working for whoever holds them.
    """
    departed_member_grants_revoke(
        user=user, organisation_id=None, actor=actor, reason="user_deleted", meta=meta
    )
    user.delete()
