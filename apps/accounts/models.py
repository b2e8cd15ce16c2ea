"""Users, organisations, memberships, invitations and organisation API keys."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac

from apps.core.models import TimeStampedModel


def normalise_email(email: str) -> str:
    """The one spelling of an address used for storage, lookups and rate-limit keys."""
    return (email or "").strip().lower()


def plan_choices() -> list[tuple[str, str]]:
    """Plans are the keys of settings.PLAN_RATE_LIMITS (a deployment may add its own)."""
    return [(name, name.replace("_", " ").title()) for name in settings.PLAN_RATE_LIMITS]


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("Users need an email address.")
        user = self.model(email=normalise_email(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        extra.setdefault("email_verified_at", timezone.now())
        if extra["is_staff"] is not True or extra["is_superuser"] is not True:
            raise ValueError("A superuser needs is_staff=True and is_superuser=True.")
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email=normalise_email(username or ""))


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in with an email address; exposed to clients only by `public_id`."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    email = models.EmailField(max_length=254, unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # Every JWT carries the version it was issued under; raising it revokes all of the user's
    # tokens at once, access tokens included (see authentication.JWTAuthentication).
    token_version = models.PositiveIntegerField(default=0)

    objects = UserManager()

    # Not a column: JWT authentication attaches the memberships it loaded with the user, for
    # the tenancy of the same request (apps.accounts.principals); None when not loaded.
    principal_memberships: tuple[Membership, ...] | None = None
    # Not a column: `is_active` as last read from or written to the database (see save()).
    _stored_is_active: bool | None = None

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []  # type: ignore[misc]

    class Meta:
        ordering = ["email"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = normalise_email(self.email)

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        # Django's hash covers the password only; with token_version in it, everything that
        # revokes the user's tokens (sign out everywhere, deactivation, a new password) also
        # ends their admin and browsable-API sessions.
        return salted_hmac(
            "apps.accounts.models.User.session_auth_hash",
            f"{self.password}:{self.token_version}",
            secret=secret,
            algorithm="sha256",
        ).hexdigest()

    @classmethod
    def from_db(
        cls, db: str | None, field_names: Collection[str], values: Collection[Any], **kwargs: Any
    ) -> User:
        user = super().from_db(db, field_names, values, **kwargs)
        user._stored_is_active = user.__dict__.get("is_active")  # None when deferred
        return user

    def set_unusable_password(self) -> None:
        # Password sign-in turned off is a password change too (Django's leaves `_password`
        # unset, so the tokens issued before would have lived on).
        super().set_unusable_password()
        self._password_disabled = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A new password or a deactivation, whichever path made it (a service, an admin form,
        # `changepassword`, a shell), revokes every token issued before it. A hasher upgrade on
        # login saves without `_password` and keeps tokens valid. The version is raised in SQL:
        # `self` may have been loaded before another revocation, and writing its old version + 1
        # back could bring the tokens issued since then back to life.
        revoke = self.pk is not None and (
            getattr(self, "_password", None) is not None
            or getattr(self, "_password_disabled", False)
            or (getattr(self, "_stored_is_active", None) is True and not self.is_active)
        )
        self._password_disabled = False
        if revoke:
            self.token_version = models.F("token_version") + 1
            update_fields = kwargs.get("update_fields")
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "token_version"}
        super().save(*args, **kwargs)
        if revoke:
            self.refresh_from_db(fields=["token_version"])
        self._stored_is_active = self.is_active


RETENTION_MAX_DAYS = 36_500  # a hundred years: longer is "forever", which is empty


def validate_redaction_policies(value: Any) -> None:
    """A list of the entity types apps/audio_jobs/redaction.py knows (the admin's JSON field)."""
    from apps.audio_jobs.redaction import ENTITY_TYPES

    if not isinstance(value, list) or any(item not in ENTITY_TYPES for item in value):
        raise ValidationError(
            "A list of entity types among: %(types)s.", params={"types": ", ".join(ENTITY_TYPES)}
        )


class Organisation(TimeStampedModel):
    """A tenant. Every piece of customer data belongs to exactly one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=150)
    plan = models.CharField(max_length=32, choices=plan_choices, default="free")
    is_active = models.BooleanField(default=True)
    # Redaction every job of the organisation gets, whatever its request asks (admins set it).
    # db_default: the release before this one creates organisations without these columns
    # while it migrates (tests/core/test_rolling_upgrade.py).
    redact_pii = models.JSONField(
        default=list,
        db_default=[],
        blank=True,
        validators=[validate_redaction_policies],
        help_text="Entity types redacted from every job's transcript, e.g. "
        '["email_address", "phone_number"].',
    )
    redact_pii_audio = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Silence the redacted spans in every job's stored audio.",
    )
    # Retention the organisation chose (apps/audio_jobs/retention.py): audio can only be kept
    # shorter than the platform's AUDIO_RETENTION_DAYS; whole jobs (transcripts, reports, audio)
    # are deleted after `job_retention_days`. Null: the platform's default (jobs: kept).
    audio_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(RETENTION_MAX_DAYS)],
        help_text="Delete jobs' audio this many days after they end (at most the platform's "
        "AUDIO_RETENTION_DAYS). Empty: the platform's.",
    )
    # Names and terms of the organisation (products, people, places) that every job gives the
    # model, after the job's own (`workers.engines.base.merge_hotwords`).
    hotwords = models.TextField(
        blank=True,
        default="",
        db_default="",
        help_text="Names and terms every job gives the model, comma-separated.",
    )
    share_links_enabled = models.BooleanField(
        default=True,
        db_default=True,
        help_text="Members may share transcripts by link with people without an account "
        "(off: no new links, and existing ones stop working).",
    )
    job_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(RETENTION_MAX_DAYS)],
        help_text="Delete whole jobs (transcript, reports, audio) this many days after they "
        "end. Empty: keep them.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class ApiKeyRole(models.TextChoices):
    """Keys read and write organisation data but never manage members or keys."""

    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


ROLE_RANK: dict[str, int] = {Role.VIEWER: 10, Role.MEMBER: 20, Role.ADMIN: 30, Role.OWNER: 40}


def role_at_least(role: str, minimum: str) -> bool:
    return ROLE_RANK.get(role, 0) >= ROLE_RANK[minimum]


class Membership(TimeStampedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "organisation"], name="accounts_membership_unique"
            ),
        ]
        indexes = [models.Index(fields=["organisation", "role"], name="membership_org_role")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.organisation_id} as {self.role}"


class Invitation(TimeStampedModel):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField(max_length=254)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    invited_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    accepted_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # sha256 of the nonce inside the signed token: resending rotates it, so older links die.
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    sent_count = models.PositiveIntegerField(default=0)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                "organisation",
                Lower("email"),
                condition=Q(status="pending"),
                name="accounts_invitation_one_pending_per_email",
            ),
        ]
        indexes = [
            models.Index(fields=["organisation", "status", "-created_at"], name="invitation_org")
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.organisation_id} ({self.status})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class ApiKey(TimeStampedModel):
    """An organisation's server-to-server credential. Only a sha256 of the key is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=ApiKeyRole.choices, default=ApiKeyRole.MEMBER)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organisation", "-created_at"], name="apikey_org_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and not self.is_expired
