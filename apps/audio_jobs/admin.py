from django.contrib import admin, messages

from apps.core.exceptions import ConflictError

from . import services
from .models import JobStatus, Transcript, TranscriptionJob, Upload


class TranscriptInline(admin.StackedInline):
    model = Transcript
    fields = ("language", "language_probability", "duration", "word_count", "created_at")
    readonly_fields = fields
    can_delete = False
    extra = 0


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
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "model_used", "engine", "task")
    search_fields = ("id", "organisation__name", "original_filename", "error_code")
    date_hierarchy = "created_at"
    list_select_related = ("organisation",)
    readonly_fields = [f.name for f in TranscriptionJob._meta.fields]
    inlines = [TranscriptInline]
    actions = ["cancel_jobs", "redispatch_jobs"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Cancel the selected jobs")
    def cancel_jobs(self, request, queryset) -> None:
        count = 0
        for job in queryset.filter(status__in=[JobStatus.QUEUED, JobStatus.PROCESSING]):
            try:
                services.job_cancel(job=job)
            except ConflictError:
                continue  # finished since the page was loaded
            count += 1
        self.message_user(request, f"Cancelled {count} job(s).", messages.SUCCESS)

    @admin.action(description="Publish the selected queued jobs again")
    def redispatch_jobs(self, request, queryset) -> None:
        sent = sum(
            services.job_dispatch(job_id=pk)
            for pk in queryset.filter(status=JobStatus.QUEUED).values_list("pk", flat=True)
        )
        self.message_user(request, f"Published {sent} job(s).", messages.SUCCESS)


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ("id", "organisation", "status", "created_at", "expires_at")
    list_filter = ("status",)
    readonly_fields = [f.name for f in Upload._meta.fields]
