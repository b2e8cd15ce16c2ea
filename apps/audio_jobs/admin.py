from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from apps.accounts.network import RequestMeta
from apps.core.admin import EstimatedCountPaginator, apply_each, fixed_choices_filter
from workers.engines import ENGINE_NAMES
from workers.engines.models import PROFILES

from . import holds, services
from .models import JobStatus, Transcript, TranscriptionJob, TranscriptRevision, Upload

HISTORY_ROWS = 50


class TranscriptInline(admin.StackedInline):
    model = Transcript
    fields = (
        "language",
        "language_probability",
        "duration",
        "word_count",
        "created_at",
        "revision",
        "edited_at",
        "revision_history",
    )
    readonly_fields = fields
    can_delete = False
    extra = 0

    # The history is shown here, read-only, and has no admin page of its own: operators never
    # rewrite it (an earlier revision is restored through the API's revert, as a new revision).
    @admin.display(description="revisions (newest first)")
    def revision_history(self, obj: Transcript) -> str:
        rows = (
            TranscriptRevision.objects.filter(transcript=obj)
            .defer("before")
            .order_by("-revision")[:HISTORY_ROWS]
        )
        lines = format_html_join(
            "",
            "<li>{}: {}{} by {} at {}, segments {}{}</li>",
            (
                (
                    row.revision,
                    row.kind,
                    f" to {row.reverted_to}" if row.reverted_to is not None else "",
                    row.editor_repr or row.editor_type,
                    row.created_at.isoformat(timespec="seconds"),
                    ", ".join(str(i) for i in row.segment_ids[:20]),
                    f" ({row.note})" if row.note else "",
                )
                for row in rows
            ),
        )
        return format_html("<ul>{}</ul>", lines) if lines else "none (the machine output)"


class QualityFilter(admin.SimpleListFilter):
    """Jobs whose automatic quality checks raised a warning (the API's `flagged`)."""

    title = "quality checks"
    parameter_name = "flagged"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [("yes", "with warnings"), ("no", "without warnings")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(quality_warnings__gt=0)
        if self.value() == "no":
            return queryset.filter(quality_warnings=0)
        return queryset


@admin.register(TranscriptionJob)
class TranscriptionJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "organisation",
        "status",
        "progress",
        "attempts",
        "duration_seconds",
        "model_used",
        "quality_warnings",
        "created_at",
        "finished_at",
    )
    # The jobs table only grows: no filter or date drill-down may scan it whole on every page
    # view (Django's defaults ran SELECT DISTINCT on model_used and engine, and MIN/MAX plus a
    # DISTINCT date_trunc over created_at), and only the listed page is counted.
    list_filter = (
        "status",
        fixed_choices_filter("model_used", "model used", [(p, p) for p in PROFILES]),
        fixed_choices_filter("engine", "engine", [(e, e) for e in ENGINE_NAMES]),
        "task",
        QualityFilter,
        ("legal_hold_at", admin.EmptyFieldListFilter),
        "created_at",
    )
    search_fields = ("id", "organisation__name", "original_filename", "error_code")
    show_full_result_count = False
    paginator = EstimatedCountPaginator  # no COUNT(*) over the whole table per page view
    list_select_related = ("organisation",)
    readonly_fields = [f.name for f in TranscriptionJob._meta.fields]
    inlines = [TranscriptInline]
    actions = ["cancel_jobs", "redispatch_jobs", "retry_jobs", "release_legal_holds"]

    def has_add_permission(self, request) -> bool:
        return False

    # Deleting here is deleting through the API: the job's audio and report files go too
    # (after the commit, durably), not only its rows. A job under legal hold cannot be deleted:
    # its page has no delete button, and a bulk delete skips it and says so.
    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.legal_hold_at is not None:
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj) -> None:
        services.job_delete(job=obj)

    def delete_queryset(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset,
            lambda job: services.job_delete(job=job),
            done="Deleted {count} job(s) with their files.",
        )

    @admin.action(description="Release the legal hold of the selected jobs", permissions=["change"])
    def release_legal_holds(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset.filter(legal_hold_at__isnull=False).select_related("organisation"),
            lambda job: holds.legal_hold_release(
                organisation=job.organisation,
                job_id=job.pk,
                user=request.user,
                reason="Released by an operator in the admin.",
                meta=RequestMeta.from_request(request),
            ),
            done="Released the legal hold of {count} job(s).",
        )

    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset) -> None:
        # A job finished since the page was loaded is refused (ConflictError) and reported.
        apply_each(
            self,
            request,
            queryset.filter(status__in=[JobStatus.QUEUED, JobStatus.PROCESSING]),
            lambda job: services.job_cancel(job=job),
            done="Cancelled {count} job(s).",
        )

    @admin.action(description="Publish the selected queued jobs again", permissions=["change"])
    def redispatch_jobs(self, request, queryset) -> None:
        sent = sum(
            services.job_dispatch(job_id=pk, again=True)
            for pk in queryset.filter(status=JobStatus.QUEUED).values_list("pk", flat=True)
        )
        self.message_user(request, f"Published {sent} job(s).", messages.SUCCESS)

    @admin.action(
        description="Retry the selected failed jobs from the start", permissions=["change"]
    )
    def retry_jobs(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset.filter(status=JobStatus.FAILED),
            lambda job: services.job_retry(job=job),
            done="Queued {count} job(s) again.",
        )


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ("id", "organisation", "status", "created_at", "expires_at")
    list_filter = ("status",)
    readonly_fields = [f.name for f in Upload._meta.fields]

    # A pending ticket's object goes with it; a consumed one's object is its job's audio and stays.
    def delete_model(self, request, obj) -> None:
        services.upload_delete(upload=obj)

    def delete_queryset(self, request, queryset) -> None:
        for upload in queryset:
            services.upload_delete(upload=upload)
