"""The audit trail: explicit, append-only events recorded by services.

Model history (field changes) is django-auditlog's `LogEntry`. `AuditEvent` records what history
cannot see: sign-ins and their failures, token reuse, password resets, invitations, key use,
role changes. Rows are never updated or deleted: `save()` refuses an update, `delete()` and the
queryset's `update()`/`delete()` refuse, the admin has no change or delete permission, and on
PostgreSQL a trigger (migration 0002) rejects UPDATE and DELETE from any client.
"""

from __future__ import annotations

import uuid
from typing import Any, NoReturn

from django.conf import settings
from django.db import models
from django.utils import timezone


class AppendOnlyError(Exception):
    """Audit events cannot be changed or deleted."""


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise AppendOnlyError("Audit events are append-only.")


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    update = _refuse
    delete = _refuse
    bulk_update = _refuse
    update_or_create = _refuse


class AuditAction(models.TextChoices):
    """Known actions. Later apps add theirs here (the column itself is free text)."""

    LOGIN_SUCCEEDED = "auth.login_succeeded", "Signed in"
    LOGIN_FAILED = "auth.login_failed", "Sign-in failed"
    LOGIN_LOCKED = "auth.login_locked", "Sign-in refused: too many attempts"
    LOGOUT = "auth.logout", "Signed out"
    LOGOUT_ALL = "auth.logout_all", "Signed out everywhere"
    TOKEN_REFRESHED = "auth.token_refreshed", "Token refreshed"
    REFRESH_REUSED = "auth.refresh_reused", "Rotated refresh token reused"
    USER_REGISTERED = "user.registered", "Registered"
    EMAIL_VERIFIED = "user.email_verified", "Email verified"
    PASSWORD_CHANGED = "user.password_changed", "Password changed"
    PASSWORD_RESET_REQUESTED = "user.password_reset_requested", "Password reset requested"
    PASSWORD_RESET = "user.password_reset", "Password reset"
    PROFILE_UPDATED = "user.profile_updated", "Profile updated"
    USER_DEACTIVATED = "user.deactivated", "Account deactivated"
    USER_REACTIVATED = "user.reactivated", "Account reactivated"
    ORGANISATION_CREATED = "organisation.created", "Organisation created"
    ORGANISATION_UPDATED = "organisation.updated", "Organisation updated"
    ORGANISATION_DEACTIVATED = "organisation.deactivated", "Organisation deactivated"
    ORGANISATION_REACTIVATED = "organisation.reactivated", "Organisation reactivated"
    INVITATION_SENT = "invitation.sent", "Invitation sent"
    INVITATION_ACCEPTED = "invitation.accepted", "Invitation accepted"
    INVITATION_REVOKED = "invitation.revoked", "Invitation revoked"
    MEMBER_ROLE_CHANGED = "member.role_changed", "Member role changed"
    MEMBER_REMOVED = "member.removed", "Member removed"
    MEMBER_LEFT = "member.left", "Member left"
    API_KEY_CREATED = "api_key.created", "API key created"
    API_KEY_USED = "api_key.used", "API key used"
    API_KEY_REVOKED = "api_key.revoked", "API key revoked"
    AUDIT_EXPORTED = "audit.exported", "Audit trail exported"
    TRANSCRIPT_EDITED = "transcript.edited", "Transcript edited"
    TRANSCRIPT_SPEAKERS_RENAMED = "transcript.speakers_renamed", "Transcript speakers renamed"
    TRANSCRIPT_REVERTED = "transcript.reverted", "Transcript reverted"
    JOB_RETRANSCRIBED = "job.retranscribed", "Job's audio transcribed again"
    JOB_LEGAL_HOLD_PLACED = "job.legal_hold_placed", "Legal hold placed on a job"
    JOB_LEGAL_HOLD_RELEASED = "job.legal_hold_released", "Legal hold on a job released"
    RETENTION_JOBS_DELETED = "retention.jobs_deleted", "Jobs deleted by the retention policy"
    TRANSCRIPT_SHARED = "transcript.shared", "Share link to a transcript made"
    TRANSCRIPT_SHARE_REVOKED = "transcript.share_revoked", "Share link revoked"
    TRANSCRIPT_SHARE_ACCESSED = "transcript.share_accessed", "Transcript opened by share link"
    WEBHOOK_ENDPOINT_CREATED = "webhook.endpoint_created", "Webhook endpoint added"
    WEBHOOK_ENDPOINT_DELETED = "webhook.endpoint_deleted", "Webhook endpoint deleted"
    WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled", "Webhook endpoint disabled"
    WEBHOOK_ENDPOINT_ENABLED = "webhook.endpoint_enabled", "Webhook endpoint enabled"
    WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated", "Webhook signing secret rotated"
    WEBHOOK_DELIVERY_REDELIVERED = "webhook.delivery_redelivered", "Webhook delivery sent again"


class AuditEvent(models.Model):
    class ActorType(models.TextChoices):
        USER = "user", "User"
        API_KEY = "api_key", "API key"
        ANONYMOUS = "anonymous", "Anonymous"
        SYSTEM = "system", "System"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    # References are kept without database constraints so that the trail outlives (and never
    # blocks or rewrites itself on) the deletion of what it mentions; the *_repr / email columns
    # keep what the row referred to.
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_email = models.CharField(max_length=254, blank=True)
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    organisation = models.ForeignKey(
        "accounts.Organisation",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=128, blank=True, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=255, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-occurred_at"]
        indexes = [
            models.Index(fields=["organisation", "-occurred_at"], name="audit_org_time"),
            models.Index(
                fields=["organisation", "action", "-occurred_at"], name="audit_org_action_time"
            ),
            models.Index(fields=["actor", "-occurred_at"], name="audit_actor_time"),
            # "What happened to this object": the trail filtered by target_type and target_id
            # (without it, the organisation's whole trail is scanned).
            models.Index(
                fields=["organisation", "target_type", "target_id", "-occurred_at"],
                name="audit_org_target_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse()
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse()
