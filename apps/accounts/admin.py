"""The operators' admin: users, organisations, memberships, invitations, API keys, and the
recorded refresh tokens (in place of simplejwt's admin pages)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import (
    AdminPasswordChangeForm,
    AdminUserCreationForm,
    UserChangeForm,
)
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from rest_framework_simplejwt.token_blacklist import admin as _simplejwt_admin  # noqa: F401
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core.admin import ReadOnlyAdminMixin, apply_each
from apps.core.exceptions import ApplicationError

from . import services
from .models import (
    ApiKey,
    Invitation,
    Membership,
    Organisation,
    User,
    validate_redaction_policies,
)
from .network import RequestMeta


class UserCreationAdminForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "full_name")


class UserChangeAdminForm(UserChangeForm):
    class Meta:
        model = User
        fields = (
            "email",
            "full_name",
            "password",
            "is_staff",
            "is_superuser",
            "groups",
            "user_permissions",
            "email_verified_at",
        )


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user", "organisation")
    fields = ("organisation", "user", "role", "created_at")
    readonly_fields = ("created_at",)


class EmailVerifiedFilter(admin.SimpleListFilter):
    title = "email verified"
    parameter_name = "verified"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(email_verified_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(email_verified_at__isnull=True)
        return queryset


# The request of the admin view that saves an operator's password form (the form has none).
_operator_request: ContextVar[HttpRequest | None] = ContextVar("operator_request", default=None)


class OperatorPasswordForm(AdminPasswordChangeForm):
    """The admin's "Change password" form of another account, saved through the service: it
    ended the user's tokens (User.save) but blacklisted no refresh token, recorded nothing and
    told the user nothing."""

    def save(self, commit: bool = True) -> Any:
        request = _operator_request.get()
        if request is None:  # pragma: no cover - only UserAdmin.user_change_password saves it
            raise RuntimeError("OperatorPasswordForm is saved by UserAdmin.user_change_password")
        usable = self.cleaned_data.get("set_usable_password", True)
        return services.password_set_by_operator(
            user=self.user,
            new_password=self.cleaned_data["password1"] if usable else None,
            actor=request.user,  # type: ignore[arg-type]
            meta=RequestMeta.from_request(request),
        )


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    change_password_form = OperatorPasswordForm

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> Any:
        token = _operator_request.set(request)
        try:
            return super().user_change_password(request, id, form_url)
        finally:
            _operator_request.reset(token)

    ordering = ("email",)
    list_display = (
        "email",
        "full_name",
        "is_active",
        "email_verified_at",
        "is_staff",
        "date_joined",
        "last_login",
    )
    list_filter = (
        "is_active",
        EmailVerifiedFilter,
        "is_staff",
        "is_superuser",
        "memberships__role",
        "date_joined",
    )
    search_fields = ("email", "full_name", "public_id", "memberships__organisation__name")
    # `is_active` changes only through the actions below (the services): unticking it in the
    # form revoked no token (a reactivation brought them back) and recorded nothing.
    readonly_fields = ("public_id", "is_active", "date_joined", "last_login", "token_version")
    fieldsets = (
        (None, {"fields": ("public_id", "email", "password")}),
        ("Profile", {"fields": ("full_name", "email_verified_at")}),
        (
            "Access",
            {
                "fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions"),
                "description": (
                    "To deactivate or reactivate an account, select it in the user list and "
                    "use the action: deactivation ends every session and revokes the API keys "
                    "and pending invitations the user created; both are recorded in the audit "
                    "trail."
                ),
            },
        ),
        ("Sessions", {"fields": ("last_login", "date_joined", "token_version")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "full_name", "usable_password", "password1", "password2"),
            },
        ),
    )
    inlines = [MembershipInline]
    actions = ["deactivate_users", "reactivate_users"]

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> list:
        return self.inlines if obj is not None else []

    # Through the service: the API keys and pending invitations of a deleted user are revoked
    # (the delete alone would only clear their author).
    def delete_model(self, request: HttpRequest, obj: User) -> None:
        services.user_delete(user=obj, actor=request.user, meta=RequestMeta.from_request(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        meta = RequestMeta.from_request(request)
        for user in queryset:
            services.user_delete(user=user, actor=request.user, meta=meta)

    @admin.action(
        description="Deactivate the selected users and end their sessions", permissions=["change"]
    )
    def deactivate_users(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        count = 0
        for user in queryset.filter(is_active=True):
            services.user_deactivate(
                user=user, actor=request.user, force=True, meta=RequestMeta.from_request(request)
            )
            count += 1
        self.message_user(request, f"Deactivated {count} user(s).", messages.SUCCESS)

    @admin.action(
        description="Reactivate the selected users (their old sessions stay ended)",
        permissions=["change"],
    )
    def reactivate_users(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        count = 0
        for user in queryset.filter(is_active=False):
            services.user_reactivate(
                user=user, actor=request.user, meta=RequestMeta.from_request(request)
            )
            count += 1
        self.message_user(request, f"Reactivated {count} user(s).", messages.SUCCESS)


class OrganisationForm(forms.ModelForm):
    """The redaction policy typed as JSON: empty means none, duplicates go, the entity types are
    checked (a model validator does not run on empty values), and audio needs a policy."""

    class Meta:
        model = Organisation
        fields = (
            "name",
            "plan",
            "redact_pii",
            "redact_pii_audio",
            "audio_retention_days",
            "job_retention_days",
            "share_links_enabled",
            "hotwords",
        )

    def clean_hotwords(self) -> str:
        """As the API takes them: each term once, whitespace collapsed, at most 500 characters."""
        from workers.engines.base import MAX_HOTWORDS_CHARS, merge_hotwords

        value = self.cleaned_data.get("hotwords") or ""
        if len(" ".join(value.split())) > MAX_HOTWORDS_CHARS:
            raise forms.ValidationError(f"At most {MAX_HOTWORDS_CHARS} characters.")
        return merge_hotwords(value)

    def clean_redact_pii(self) -> list[str]:
        value = self.cleaned_data.get("redact_pii")
        if value in (None, "", {}, []):
            return []
        validate_redaction_policies(value)
        return sorted(set(value))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("redact_pii_audio") and not cleaned.get("redact_pii"):
            self.add_error("redact_pii_audio", "Name the entity types to redact first.")
        return cleaned


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    form = OrganisationForm
    list_display = ("name", "plan", "is_active", "member_count", "created_at")
    list_filter = ("plan", "is_active", "created_at")
    search_fields = ("name", "id", "memberships__user__email")
    # Members are listed (and their roles changed) on the membership pages, filtered to this
    # organisation: an inline of them cost queries per member (65 at 61 members) and has no
    # pages for an organisation of thousands.
    # `is_active` changes only through the actions below (the services), which stop the
    # organisation's jobs and record organisation.deactivated / .reactivated.
    readonly_fields = ("id", "is_active", "members", "created_at", "updated_at")
    actions = ["deactivate_organisations", "reactivate_organisations"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organisation]:
        return super().get_queryset(request).annotate(_members=Count("memberships"))

    # Deleting an organisation deletes its stored files too (jobs' audio, reports, unused
    # uploads), durably after the commit; a plain cascade would leave them in storage. One with
    # jobs under legal hold cannot be deleted (no delete button; a bulk delete skips it).
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        from apps.audio_jobs.holds import held_jobs_count

        if obj is not None and held_jobs_count(organisation_id=obj.pk):
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: Organisation) -> None:
        from apps.audio_jobs.services import organisation_delete

        organisation_delete(organisation=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Organisation]) -> None:
        from apps.audio_jobs.services import organisation_delete

        apply_each(
            self,
            request,
            queryset,
            lambda organisation: organisation_delete(organisation=organisation),
            done="Deleted {count} organisation(s) with their files.",
        )

    @admin.display(description="members", ordering="_members")
    def member_count(self, obj: Any) -> int:
        return obj._members

    @admin.display(description="members")
    def members(self, obj: Organisation) -> str:
        if obj.pk is None:
            return "-"
        count = getattr(obj, "_members", None)
        if count is None:
            count = obj.memberships.count()
        url = reverse("admin:accounts_membership_changelist")
        return format_html(
            '<a href="{}?{}">{} member(s): list, change roles</a>',
            url,
            urlencode({"organisation": obj.pk}),
            count,
        )

    # What an operator changes here is recorded in the organisation's audit trail, as the
    # API's own changes are (Django's admin log records no action, and no organisation sees it).
    _AUDITED_FIELDS = OrganisationForm.Meta.fields

    def save_model(self, request: HttpRequest, obj: Organisation, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            changes = {
                field: [form.initial.get(field), form.cleaned_data[field]]
                for field in self._AUDITED_FIELDS
                if change and field in form.changed_data
            }
            if changes:
                self._audit(request, obj, changes)

    def _audit(self, request: HttpRequest, organisation: Organisation, changes: dict) -> None:
        audit_record(
            action=AuditAction.ORGANISATION_UPDATED,
            actor=request.user,
            organisation=organisation,
            target=organisation,
            meta=RequestMeta.from_request(request),
            metadata={**changes, "via": "admin"},
        )

    @admin.action(
        description="Deactivate the selected organisations (their queued and running jobs are "
        "cancelled)",
        permissions=["change"],
    )
    def deactivate_organisations(
        self, request: HttpRequest, queryset: QuerySet[Organisation]
    ) -> None:
        # Already deactivated ones too: the service then finishes cancelling their jobs (what an
        # interrupted run left).
        self._each_through(
            request,
            queryset,
            services.organisation_deactivate,
            done="Deactivated {count} organisation(s).",
        )

    @admin.action(
        description="Reactivate the selected organisations (cancelled jobs stay so)",
        permissions=["change"],
    )
    def reactivate_organisations(
        self, request: HttpRequest, queryset: QuerySet[Organisation]
    ) -> None:
        self._each_through(
            request,
            queryset.filter(is_active=False),
            services.organisation_reactivate,
            done="Reactivated {count} organisation(s).",
        )

    def _each_through(self, request: HttpRequest, organisations, service, *, done: str) -> None:
        """`service(organisation=..., actor=..., meta=...)` on each row, as the operator."""
        meta = RequestMeta.from_request(request)
        apply_each(
            self,
            request,
            organisations,
            lambda organisation: service(organisation=organisation, actor=request.user, meta=meta),
            done=done,
        )


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organisation", "role", "created_at")
    list_filter = ("role", "organisation__plan", "created_at")
    search_fields = ("user__email", "user__full_name", "organisation__name", "organisation__id")
    list_select_related = ("user", "organisation")
    autocomplete_fields = ("user", "organisation")


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = (
        "email",
        "organisation",
        "role",
        "status",
        "expires_at",
        "sent_count",
        "created_at",
    )
    list_filter = ("status", "role", "created_at")
    search_fields = ("email", "organisation__name")
    list_select_related = ("organisation",)
    readonly_fields = (
        "status",
        "invited_by",
        "accepted_by",
        "accepted_at",
        "expires_at",
        "sent_count",
        "last_sent_at",
        "created_at",
    )
    exclude = ("token_hash",)
    autocomplete_fields = ("organisation",)  # one search box, not every organisation
    actions = ["resend_invitations", "revoke_invitations"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # invitations are created by organisation admins through the API

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # The emailed link grants this address this role in this organisation: changing them
        # would hand the same, still valid link to another address, role or organisation.
        # Revoke the invitation and invite again instead.
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, "organisation", "email", "role") if obj is not None else fields

    @admin.action(
        description="Resend the selected invitations (with a fresh link)", permissions=["change"]
    )
    def resend_invitations(self, request: HttpRequest, queryset: QuerySet[Invitation]) -> None:
        sent = 0
        for invitation in queryset.select_related("organisation"):
            try:
                services.invitation_resend_by_operator(invitation=invitation, operator=request.user)
            except ApplicationError as exc:
                self.message_user(request, f"{invitation.email}: {exc.message}", messages.WARNING)
            else:
                sent += 1
        self.message_user(request, f"Resent {sent} invitation(s).", messages.SUCCESS)

    @admin.action(
        description="Revoke the selected invitations (their links stop working)",
        permissions=["change"],
    )
    def revoke_invitations(self, request: HttpRequest, queryset: QuerySet[Invitation]) -> None:
        count = 0
        pending = queryset.filter(status=Invitation.Status.PENDING).select_related("organisation")
        for invitation in pending:
            try:
                services.invitation_revoke_by_operator(
                    invitation=invitation,
                    operator=request.user,
                    meta=RequestMeta.from_request(request),
                )
            except ApplicationError as exc:  # accepted or revoked meanwhile
                self.message_user(request, f"{invitation.email}: {exc.message}", messages.WARNING)
            else:
                count += 1
        self.message_user(request, f"Revoked {count} invitation(s).", messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "prefix",
        "organisation",
        "role",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("role", ("revoked_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("name", "prefix", "organisation__name")
    list_select_related = ("organisation",)
    exclude = ("key_hash",)
    readonly_fields = (
        "organisation",
        "name",
        "role",
        "prefix",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "revoked_by",
        "last_used_at",
    )
    actions = ["revoke_keys"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key is shown once to the organisation admin who creates it

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for api_key in queryset.filter(revoked_at__isnull=True).select_related("organisation"):
            actor = Membership(user=request.user, organisation=api_key.organisation, role="owner")
            services.api_key_revoke(
                actor=actor, api_key=api_key, meta=RequestMeta.from_request(request)
            )
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


# ---- Refresh tokens ---------------------------------------------------------------------------
# simplejwt registers admin pages of its own that show a recorded token's full text: to anyone
# allowed to *view* them, a live credential of another user. New tokens are recorded without it
# (and migration 0002 blanked the old ones), and these pages replace simplejwt's, read-only and
# without the field, so neither a leftover value nor a future change brings the text back.
for _model in (OutstandingToken, BlacklistedToken):
    if admin.site.is_registered(_model):  # by simplejwt's admin module, imported above
        admin.site.unregister(_model)


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    actions = None


@admin.register(OutstandingToken)
class OutstandingTokenAdmin(ReadOnlyAdmin):
    list_display = ("jti", "user", "created_at", "expires_at")
    search_fields = ("jti", "user__email", "user__public_id")
    list_select_related = ("user",)
    fields = readonly_fields = ("jti", "user", "created_at", "expires_at")
    ordering = ("-created_at",)
    show_full_result_count = False


@admin.register(BlacklistedToken)
class BlacklistedTokenAdmin(ReadOnlyAdmin):
    list_display = ("jti", "user", "expires_at", "blacklisted_at")
    search_fields = ("token__jti", "token__user__email", "token__user__public_id")
    list_select_related = ("token__user",)
    fields = readonly_fields = ("jti", "user", "expires_at", "blacklisted_at")
    ordering = ("-blacklisted_at",)
    show_full_result_count = False

    @admin.display(description="jti", ordering="token__jti")
    def jti(self, obj: BlacklistedToken) -> str:
        return obj.token.jti

    @admin.display(description="user", ordering="token__user")
    def user(self, obj: BlacklistedToken) -> Any:
        return obj.token.user

    @admin.display(description="expires at", ordering="token__expires_at")
    def expires_at(self, obj: BlacklistedToken) -> Any:
        return obj.token.expires_at
