"""Organisations, memberships (roles, removal, leaving) and invitations."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError

from ..exceptions import Forbidden, InvalidLink
from ..models import (
    Invitation,
    Membership,
    Organisation,
    Role,
    User,
    normalise_email,
    role_at_least,
)
from ..network import RequestMeta
from ..ratelimit import guard_invitation_address
from ..tokens import (
    TokenPair,
    invitation_token_new,
    invitation_token_read,
    token_pair_issue,
)
from ._common import (
    active_owners_locked,
    check_password_strength,
    departed_member_grants_revoke,
    enqueue_email,
    public_link,
    user_tokens_revoke,
)


# ---- Organisations and memberships ------------------------------------------------------------
@transaction.atomic
def organisation_create(*, user: User, name: str, meta: RequestMeta) -> Organisation:
    """A new organisation (on the default plan) owned by `user`.

    A user owns at most `ORGANISATIONS_PER_USER_MAX`: every organisation starts with its plan's
    monthly audio quota, so unlimited organisations would be unlimited free minutes.
    """
    User.objects.select_for_update().filter(pk=user.pk).first()  # one create at a time per user
    limit = settings.ORGANISATIONS_PER_USER_MAX
    owned = Membership.objects.filter(user=user, role=Role.OWNER).count()
    if limit and owned >= limit:
        raise ConflictError(
            f"You already own {owned} organisations, the most one account may own.",
            code="organisation_limit",
            details={"limit": limit},
        )
    organisation = Organisation.objects.create(name=name, plan=settings.RATE_LIMIT_DEFAULT_PLAN)
    Membership.objects.create(user=user, organisation=organisation, role=Role.OWNER)
    audit_record(
        action=AuditAction.ORGANISATION_CREATED,
        actor=user,
        organisation=organisation,
        target=organisation,
        meta=meta,
    )
    return organisation


# What owners and admins change through the API (the plan and `is_active` are operators').
ORGANISATION_SETTINGS = (
    "name",
    "redact_pii",
    "redact_pii_audio",
    "audio_retention_days",
    "job_retention_days",
    "share_links_enabled",
    "hotwords",
)


def organisation_update(
    *, membership: Membership, meta: RequestMeta, **fields: Any
) -> Organisation:
    """Change the organisation's settings (admins): its name, the PII redaction every job gets,
    its retention. Only the fields given change; a retention of None goes back to the platform's
    default. Each change is audited with its old and new value.

    The redaction policy applies to jobs created from then on (`_create_job` reads it under the
    organisation's lock); jobs already queued keep what they were created with. Retention applies
    at the next hourly run, to every job (apps/audio_jobs/retention.py)."""
    unknown = set(fields) - set(ORGANISATION_SETTINGS)
    if unknown:
        raise TypeError(f"Not an organisation setting: {sorted(unknown)}")
    if not role_at_least(membership.role, Role.ADMIN):
        raise Forbidden("Only admins can change the organisation.")
    organisation = membership.organisation
    if not organisation.is_active:  # as every tenant endpoint answers (tenancy.get_tenant)
        raise PermissionDenied("This organisation has been deactivated.")
    policies = fields.get("redact_pii", organisation.redact_pii)
    audio = fields.get("redact_pii_audio", organisation.redact_pii_audio)
    if audio and not policies:
        raise ApplicationError(
            "The request is invalid.",
            code="validation_error",
            details={"redact_pii_audio": ["Name the entity types to redact in `redact_pii`."]},
        )
    changes = {
        field: [getattr(organisation, field), value]
        for field, value in fields.items()
        if value != getattr(organisation, field)
    }
    if changes:
        for field, (_old, value) in changes.items():
            setattr(organisation, field, value)
        organisation.save(update_fields=[*changes, "updated_at"])
        audit_record(
            action=AuditAction.ORGANISATION_UPDATED,
            actor=membership.user,
            organisation=organisation,
            target=organisation,
            meta=meta,
            metadata=changes,
        )
    return organisation


def organisation_deactivate(
    *, organisation: Organisation, actor: User | None, meta: RequestMeta | None = None
) -> Organisation:
    """Switch an organisation off (an operator's decision): every request for it is refused
    (403) and its queued and running jobs are cancelled.

    Nothing else is revoked, so that a reactivation restores the organisation as it was: its API
    keys, its members' sessions (they may use other organisations) and pending invitations stay,
    and are refused for this organisation because each checks `is_active` on use (API keys on
    every request, JWTs through the members' principals, which the save makes stale, invitations
    when accepted, open feed streams within FEED_ACCESS_RECHECK_SECONDS). Jobs are not kept
    waiting: a switched-off tenant should use no transcription capacity, and nobody can read
    results until a reactivation. A queued job is cancelled (its minutes refunded); a running
    one is asked to stop, as the API's cancel does.

    Two steps, so that it neither races nor deadlocks with the organisation's own work:
    1. one short transaction under the organisation's row lock: the flag and the audit record.
       From its commit on no job can be created for it (`quota_check` reads the flag under the
       same lock), a worker cancels any job of it it claims, and a finishing job of it is
       cancelled instead of completed;
    2. after that commit, its jobs, in batches, each its own transaction
       (`jobs_cancel_for_organisation`: job rows first, feed events last, the order the workers
       take them). Called again on an organisation already off, it runs this step again, which
       finishes what an interrupted run left (a timeout, a killed process).
    """
    from apps.audio_jobs.models import ACTIVE_STATUSES, JobStatus, TranscriptionJob
    from apps.audio_jobs.services import jobs_cancel_for_organisation

    with transaction.atomic():
        locked = (
            Organisation.objects.select_for_update(no_key=True).filter(pk=organisation.pk).first()
        )
        if locked is None:
            raise NotFoundError(
                "This organisation no longer exists.", code="organisation_not_found"
            )
        if not locked.is_active:  # already off: only finish cancelling its jobs (step 2)
            organisation.is_active = False
            transaction.on_commit(
                lambda: jobs_cancel_for_organisation(organisation_id=organisation.pk)
            )
            return organisation
        locked.is_active = False
        locked.save(update_fields=["is_active", "updated_at"])  # stales every member's principal
        active = TranscriptionJob.objects.filter(
            organisation_id=organisation.pk, status__in=ACTIVE_STATUSES
        )
        audit_record(
            action=AuditAction.ORGANISATION_DEACTIVATED,
            actor=actor if actor is not None else "system",
            organisation=locked,
            target=locked,
            meta=meta,
            metadata={
                "jobs_cancelled": active.filter(status=JobStatus.QUEUED).count(),
                "jobs_stopping": active.filter(status=JobStatus.PROCESSING).count(),
            },
        )
    organisation.is_active = False
    # After the flag's commit: inside a caller's transaction this waits for its commit.
    transaction.on_commit(lambda: jobs_cancel_for_organisation(organisation_id=organisation.pk))
    return organisation


@transaction.atomic
def organisation_reactivate(
    *, organisation: Organisation, actor: User | None, meta: RequestMeta | None = None
) -> Organisation:
    """Let an organisation's members and API keys use it again (an operator's decision).

    What the deactivation cancelled stays cancelled: clients send those jobs again.
    """
    locked = Organisation.objects.select_for_update(no_key=True).filter(pk=organisation.pk).first()
    if locked is None:
        raise NotFoundError("This organisation no longer exists.", code="organisation_not_found")
    if locked.is_active:
        organisation.is_active = True
        return organisation
    organisation.is_active = True
    organisation.save(update_fields=["is_active", "updated_at"])
    audit_record(
        action=AuditAction.ORGANISATION_REACTIVATED,
        actor=actor if actor is not None else "system",
        organisation=organisation,
        target=organisation,
        meta=meta,
    )
    return organisation


def _another_active_owner(membership: Membership) -> bool:
    """Whether the organisation keeps an active owner without `membership` (owner rows locked)."""
    return bool(active_owners_locked(membership.organisation_id) - {membership.user_id})


@transaction.atomic
def membership_change_role(
    *, actor: Membership, membership: Membership, role: str, meta: RequestMeta
) -> Membership:
    """Change a member's role. Admins manage non-owners; owner rights need an owner."""
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden("Only admins can change roles.")
    if Role.OWNER in (membership.role, role) and actor.role != Role.OWNER:
        raise Forbidden("Only owners can grant or take away the owner role.")
    old = membership.role
    if old == role:
        return membership
    if old == Role.OWNER and not _another_active_owner(membership):
        raise ConflictError("An organisation needs at least one active owner.", code="last_owner")
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    audit_record(
        action=AuditAction.MEMBER_ROLE_CHANGED,
        actor=actor.user,
        organisation=membership.organisation,
        target=membership.user,
        meta=meta,
        metadata={"from": old, "to": role, "membership": str(membership.id)},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Membership, membership: Membership, meta: RequestMeta) -> None:
    """Remove someone from the organisation and end every session they have.

    The API keys they created there and their pending invitations to it are revoked too.
    """
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden("Only admins can remove members.")
    if membership.role == Role.OWNER:
        if actor.role != Role.OWNER:
            raise Forbidden("Only owners can remove an owner.")
        if not _another_active_owner(membership):
            raise ConflictError(
                "An organisation needs at least one active owner.", code="last_owner"
            )
    user = membership.user
    membership.delete()
    user_tokens_revoke(user=user)
    audit_record(
        action=AuditAction.MEMBER_REMOVED,
        actor=actor.user,
        organisation=actor.organisation,
        target=user,
        meta=meta,
        metadata={"role": membership.role},
    )
    departed_member_grants_revoke(
        user=user,
        organisation_id=actor.organisation_id,
        actor=actor.user,
        reason="member_removed",
        meta=meta,
    )


@transaction.atomic
def membership_leave(*, membership: Membership, meta: RequestMeta) -> None:
    """Leave an organisation: the API keys the member created there and their pending
    invitations to it are revoked (the organisation can no longer ask its author about them)."""
    if membership.role == Role.OWNER and not _another_active_owner(membership):
        raise ConflictError(
            "You are the only active owner: make someone else an owner before leaving.",
            code="last_owner",
        )
    membership.delete()
    audit_record(
        action=AuditAction.MEMBER_LEFT,
        actor=membership.user,
        organisation=membership.organisation,
        target=membership.user,
        meta=meta,
    )
    departed_member_grants_revoke(
        user=membership.user,
        organisation_id=membership.organisation_id,
        actor=membership.user,
        reason="member_left",
        meta=meta,
    )


# ---- Invitations ------------------------------------------------------------------------------
# Anyone can register, own an organisation, name it anything and invite any address, so the
# platform's invitation emails are bounded three ways: a resend waits
# INVITATION_RESEND_COOLDOWN_SECONDS after the last send (429 `invitation_resend_too_soon`), an
# invitation is sent at most INVITATION_SENDS_MAX times (409 `invitation_send_limit`: waiting
# does not help), and an address receives at most INVITATION_RATE_PER_ADDRESS invitation emails
# whichever organisations send them (429 `invitation_address_limit`; revoking and inviting again
# is counted there too). Operators' resends (the admin site) are exempt but still counted.
def _resend_limits_check(invitation: Invitation) -> None:
    """Refuse a resend that comes too soon after the last send, or past the invitation's cap."""
    limit = settings.INVITATION_SENDS_MAX
    if limit and invitation.sent_count >= limit:
        raise ConflictError(
            f"This invitation has been sent {invitation.sent_count} times, the most it may be. "
            "Revoke it and invite again if the address is right.",
            code="invitation_send_limit",
            details={"limit": limit},
        )
    cooldown = settings.INVITATION_RESEND_COOLDOWN_SECONDS
    if cooldown > 0 and invitation.last_sent_at is not None:
        next_allowed = invitation.last_sent_at + dt.timedelta(seconds=cooldown)
        wait = math.ceil((next_allowed - timezone.now()).total_seconds())
        if wait > 0:
            raise ApplicationError(
                f"This invitation was sent recently: it can be sent again in {wait} seconds.",
                code="invitation_resend_too_soon",
                status_code=429,
                details={"retry_after_seconds": wait},
                headers={"Retry-After": str(wait)},
            )


def _send_invitation(invitation: Invitation, token: str, inviter: User | None) -> None:
    enqueue_email(
        "invitation",
        invitation.email,
        {
            "organisation_name": invitation.organisation.name,
            "inviter_name": (inviter.full_name or inviter.email) if inviter else "LexisCore",
            "role": invitation.role,
            "accept_url": public_link("/accept-invitation", token),
            "expires_at": invitation.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        },
        dedupe_key=f"invitation:{invitation.id}:{invitation.sent_count}",
    )


def _issue_invitation_token(invitation: Invitation) -> str:
    token, token_hash = invitation_token_new(invitation_id=str(invitation.id))
    invitation.token_hash = token_hash
    invitation.expires_at = timezone.now() + dt.timedelta(seconds=settings.INVITATION_MAX_AGE)
    invitation.sent_count += 1
    invitation.last_sent_at = timezone.now()
    return token


@transaction.atomic
def invitation_create(*, actor: Membership, email: str, role: str, meta: RequestMeta) -> Invitation:
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden("Only admins can invite.")
    if role == Role.OWNER and actor.role != Role.OWNER:
        raise Forbidden("Only owners can invite owners.")
    organisation = actor.organisation
    address = normalise_email(email)
    if Membership.objects.filter(organisation=organisation, user__email=address).exists():
        raise ConflictError("This person is already a member.", code="already_member")
    pending = (
        Invitation.objects.select_for_update()
        .filter(organisation=organisation, email=address, status=Invitation.Status.PENDING)
        .first()
    )
    if pending is not None:
        if not pending.is_expired:
            raise ConflictError(
                "This address already has a pending invitation: resend it instead.",
                code="already_invited",
                details={"invitation": str(pending.id)},
            )
        pending.status = Invitation.Status.REVOKED
        pending.save(update_fields=["status", "updated_at"])
    guard_invitation_address(address=address)  # last check before the email: it counts one
    invitation = Invitation(
        id=uuid.uuid4(), organisation=organisation, email=address, role=role, invited_by=actor.user
    )
    token = _issue_invitation_token(invitation)
    invitation.save()
    _send_invitation(invitation, token, actor.user)
    audit_record(
        action=AuditAction.INVITATION_SENT,
        actor=actor.user,
        organisation=organisation,
        target=invitation,
        target_repr=address,
        meta=meta,
        metadata={"role": role},
    )
    return invitation


@transaction.atomic
def invitation_resend(
    *,
    actor: Membership,
    invitation: Invitation | None,
    meta: RequestMeta | None = None,
    enforce_limits: bool = True,
) -> Invitation:
    """Send a pending invitation again with a new link (older links stop working).

    Checked under the invitation's row lock, so parallel resends see each other's sends: the
    cooldown and the per-invitation cap (`_resend_limits_check`), then the address's limit across
    organisations. `enforce_limits=False` (an operator) skips them; the email is still counted.
    """
    if invitation is None:
        raise NotFoundError("No such invitation.")
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden("Only admins can resend invitations.")
    invitation = (
        Invitation.objects.select_for_update().select_related("organisation").get(pk=invitation.pk)
    )
    if invitation.status != Invitation.Status.PENDING:
        raise ConflictError("Only pending invitations can be resent.", code="not_pending")
    if enforce_limits:
        _resend_limits_check(invitation)
    guard_invitation_address(address=invitation.email, enforce=enforce_limits)
    token = _issue_invitation_token(invitation)
    invitation.save()
    _send_invitation(invitation, token, actor.user)
    audit_record(
        action=AuditAction.INVITATION_SENT,
        actor=actor.user,
        organisation=invitation.organisation,
        target=invitation,
        target_repr=invitation.email,
        meta=meta,
        metadata={"role": invitation.role, "resend": invitation.sent_count},
    )
    return invitation


def invitation_resend_by_operator(*, invitation: Invitation, operator: User) -> Invitation:
    """The admin site's "resend" action: the operator acts with owner rights, and is not held to
    the resend limits (a deliberate, audited decision); the email still counts for the address."""
    actor = Membership(user=operator, organisation=invitation.organisation, role=Role.OWNER)
    return invitation_resend(
        actor=actor, invitation=invitation, meta=RequestMeta(), enforce_limits=False
    )


@transaction.atomic
def invitation_revoke(*, actor: Membership, invitation: Invitation, meta: RequestMeta) -> None:
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden("Only admins can revoke invitations.")
    if invitation.status != Invitation.Status.PENDING:
        raise ConflictError("Only pending invitations can be revoked.", code="not_pending")
    invitation.status = Invitation.Status.REVOKED
    invitation.save(update_fields=["status", "updated_at"])
    audit_record(
        action=AuditAction.INVITATION_REVOKED,
        actor=actor.user,
        organisation=invitation.organisation,
        target=invitation,
        target_repr=invitation.email,
        meta=meta,
    )


def invitation_revoke_by_operator(
    *, invitation: Invitation, operator: User, meta: RequestMeta
) -> None:
    """The admin site's "revoke" action: the operator acts with owner rights."""
    actor = Membership(user=operator, organisation=invitation.organisation, role=Role.OWNER)
    invitation_revoke(actor=actor, invitation=invitation, meta=meta)


@transaction.atomic
def invitation_accept(
    *,
    token: str,
    user: User | None,
    password: str | None = None,
    full_name: str = "",
    meta: RequestMeta,
) -> tuple[Membership, TokenPair | None]:
    """Join the invitation's organisation.

    A signed-in user joins if the invitation was sent to their address. Without a session, a
    new account is created for the invited address (the link proves it, so it is verified) and
    a token pair is returned; an address that already has an account must sign in first.
    """
    read = invitation_token_read(token)
    if read is None:
        raise InvalidLink()
    invitation_id, nonce_hash = read
    try:
        invitation = (
            Invitation.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .filter(id=invitation_id, token_hash=nonce_hash)
            .first()
        )
    except DjangoValidationError:
        invitation = None
    if (
        invitation is None
        or invitation.status != Invitation.Status.PENDING
        or invitation.is_expired
        or not invitation.organisation.is_active
    ):
        raise InvalidLink()

    created = False
    if user is not None:
        if normalise_email(user.email) != invitation.email:
            raise ApplicationError(
                "This invitation was sent to another address.",
                code="invitation_email_mismatch",
                status_code=403,
            )
    else:
        if User.objects.filter(email=invitation.email).exists():
            raise ConflictError(
                "An account exists for this address: sign in, then accept the invitation.",
                code="account_exists",
            )
        if not password:
            raise DjangoValidationError({"password": ["This field is required."]})
        check_password_strength(password, User(email=invitation.email, full_name=full_name))
        user = User.objects.create_user(
            email=invitation.email,
            password=password,
            full_name=full_name,
            email_verified_at=timezone.now(),
        )
        created = True
    membership, _created = Membership.objects.get_or_create(
        user=user, organisation=invitation.organisation, defaults={"role": invitation.role}
    )
    invitation.status = Invitation.Status.ACCEPTED
    invitation.accepted_by = user
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["status", "accepted_by", "accepted_at", "updated_at"])
    pair = token_pair_issue(user=user, organisation=invitation.organisation) if created else None
    audit_record(
        action=AuditAction.INVITATION_ACCEPTED,
        actor=user,
        organisation=invitation.organisation,
        target=invitation,
        target_repr=invitation.email,
        meta=meta,
        metadata={"role": membership.role, "new_account": pair is not None},
    )
    return membership, pair
