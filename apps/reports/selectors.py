"""Reads of reports, always scoped to one organisation, and the reads of a data export.

Data exports hold personal data, so who may see one is narrower than the organisation: a member
export only by the member who asked for it, an organisation export only by owners and admins,
and neither by an API key. `report_list` and `report_get` leave exports out unless they are told
who reads (fail closed); an export the reader may not see is "not found", as another
organisation's report is.

The `export_*` reads take the organisation and, for a member export, the member's user: every
one of them filters by both, so a member export can hold nothing of other members.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from apps.core.exceptions import NotFoundError

from .models import ExportScope, Report, ReportKind


def _visible(queryset: QuerySet[Report], *, user=None, role: str | None = None) -> QuerySet[Report]:
    """`queryset` without the exports that `user` (with `role` in the organisation) may not see.

    No user (an API key, or a caller that does not say): no exports at all.
    """
    from apps.accounts.models import Role, role_at_least

    if user is None or not getattr(user, "pk", None):
        return queryset.exclude(kind=ReportKind.EXPORT)
    visible = Q(export_scope=ExportScope.MEMBER, created_by=user)
    if role is not None and role_at_least(role, Role.ADMIN):
        visible |= Q(export_scope=ExportScope.ORGANISATION)
    return queryset.filter(~Q(kind=ReportKind.EXPORT) | (Q(kind=ReportKind.EXPORT) & visible))


def report_list(
    *, organisation, kind: str | None = None, user=None, role: str | None = None
) -> QuerySet[Report]:
    queryset = _visible(Report.objects.filter(organisation=organisation), user=user, role=role)
    if kind:
        queryset = queryset.filter(kind=kind)
    # The id breaks ties: reports created in the same instant keep one order across pages.
    return queryset.order_by("-created_at", "-id")


def report_get(*, organisation, report_id, user=None, role: str | None = None) -> Report:
    queryset = _visible(Report.objects.filter(organisation=organisation), user=user, role=role)
    try:
        return queryset.get(pk=report_id)
    except (Report.DoesNotExist, ValueError):
        raise NotFoundError("No such report.", code="report_not_found") from None


def export_pending_exists(*, organisation, scope: str, user=None) -> bool:
    """Whether an export that would hold off this one is in progress: the requester's own member
    export (member scope), or the organisation's export (organisation scope)."""
    from .models import PENDING_STATUSES

    queryset = Report.objects.filter(
        organisation=organisation,
        kind=ReportKind.EXPORT,
        export_scope=scope,
        status__in=PENDING_STATUSES,
    )
    if scope == ExportScope.MEMBER:
        queryset = queryset.filter(created_by=user)
    return queryset.exists()


# ---- What a data export reads -----------------------------------------------------------------
def export_memberships(*, organisation, user=None) -> QuerySet[Any]:
    from apps.accounts.models import Membership

    queryset = Membership.objects.filter(organisation=organisation).select_related("user")
    if user is not None:
        queryset = queryset.filter(user=user)
    return queryset.order_by("created_at", "id")


def export_invitations(*, organisation) -> QuerySet[Any]:
    from apps.accounts.models import Invitation

    return (
        Invitation.objects.filter(organisation=organisation)
        .select_related("invited_by", "accepted_by")
        .order_by("created_at", "id")
    )


def export_jobs(*, organisation, user=None) -> QuerySet[Any]:
    from apps.audio_jobs.models import TranscriptionJob

    queryset = TranscriptionJob.objects.filter(organisation=organisation).select_related(
        "created_by"
    )
    if user is not None:
        queryset = queryset.filter(created_by=user)
    return queryset.order_by("created_at", "id")


def export_transcripts(*, organisation, user=None) -> QuerySet[Any]:
    from apps.audio_jobs.models import Transcript

    queryset = Transcript.objects.filter(job__organisation=organisation).select_related("job")
    if user is not None:
        queryset = queryset.filter(job__created_by=user)
    return queryset.order_by("job__created_at", "job_id")


def export_transcript_revisions(*, transcript) -> QuerySet[Any]:
    """A transcript's edits and reverts, oldest first, without the previous texts (`before`):
    what GET /jobs/<id>/transcript/revisions lists. The transcript comes from
    `export_transcripts`, so is already the organisation's (and, for a member, their job's)."""
    from apps.audio_jobs.models import TranscriptRevision

    return (
        TranscriptRevision.objects.filter(transcript_id=transcript.pk)
        .defer("before")
        .order_by("revision")
    )


def export_audio_jobs(*, organisation, user=None) -> QuerySet[Any]:
    """The jobs whose audio is still stored (retention deletes it, and clears `audio_key`)."""
    return export_jobs(organisation=organisation, user=user).exclude(audio_key="")


def export_usage(*, organisation, user=None) -> QuerySet[Any]:
    """The AudioUsage ledger. For a member, the rows of the jobs they created that still exist
    (the ledger names no member: a deleted job's row cannot be attributed)."""
    from apps.audio_jobs.models import AudioUsage

    queryset = AudioUsage.objects.filter(organisation=organisation)
    if user is not None:
        queryset = queryset.filter(
            job_id__in=export_jobs(organisation=organisation, user=user).values("id")
        )
    return queryset.order_by("job_created_at", "job_id")


def export_api_keys(*, organisation, user=None) -> QuerySet[Any]:
    from apps.accounts.models import ApiKey

    queryset = ApiKey.objects.filter(organisation=organisation).select_related(
        "created_by", "revoked_by"
    )
    if user is not None:
        queryset = queryset.filter(created_by=user)
    return queryset.order_by("created_at", "id")


def export_shares(*, organisation, user=None) -> QuerySet[Any]:
    """The organisation's transcript share links, or those `user` made."""
    from apps.audio_jobs.models import TranscriptShare

    queryset = TranscriptShare.objects.filter(organisation=organisation).select_related(
        "created_by"
    )
    if user is not None:
        queryset = queryset.filter(created_by=user)
    return queryset.order_by("created_at", "id")


def export_webhook_endpoints(*, organisation) -> QuerySet[Any]:
    from apps.webhooks.models import WebhookEndpoint

    return (
        WebhookEndpoint.objects.filter(organisation=organisation)
        .select_related("created_by")
        .order_by("created_at", "id")
    )


def export_webhook_deliveries(*, organisation) -> QuerySet[Any]:
    """Newest first (the export keeps the most recent EXPORT_MAX_WEBHOOK_DELIVERIES)."""
    from apps.webhooks.models import WebhookDelivery

    return WebhookDelivery.objects.filter(organisation=organisation).order_by("-created_at", "-id")


def export_audit_events(*, organisation, user=None) -> QuerySet[Any]:
    """The organisation's events; for a member, the events they did (actor) in it, and those of
    their own account that belong to no organisation (sign-ins, password changes)."""
    from apps.audit.models import AuditEvent

    if user is None:
        queryset = AuditEvent.objects.filter(organisation=organisation)
    else:
        queryset = AuditEvent.objects.filter(
            Q(organisation=organisation) | Q(organisation__isnull=True), actor=user
        )
    return queryset.select_related("actor", "api_key").order_by("occurred_at", "id")


def export_reports(*, organisation, exclude_id, user=None) -> QuerySet[Report]:
    """The organisation's other reports; for a member, the reports they asked for."""
    queryset = Report.objects.filter(organisation=organisation).exclude(pk=exclude_id)
    if user is not None:
        queryset = queryset.filter(created_by=user)
    else:
        # Other members' personal exports stay theirs.
        queryset = queryset.exclude(export_scope=ExportScope.MEMBER)
    return queryset.order_by("created_at", "id")


def export_notification_preferences(*, user) -> Any:
    from apps.notifications.models import NotificationPreference

    return NotificationPreference.objects.filter(user=user).first()
