from django.contrib import admin, messages

from . import services, storage
from .exceptions import ApplicationError
from .models import DeadLetter, PendingDeletion


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ("created_at", "task_name", "queue", "status", "attempts", "exception_type")
    list_filter = ("status", "queue", "task_name")
    search_fields = ("task_id", "task_name", "error", "request_id")
    readonly_fields = [f.name for f in DeadLetter._meta.fields]
    actions = ["requeue"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Requeue the selected messages")
    def requeue(self, request, queryset) -> None:
        count = 0
        for dead_letter in queryset.filter(status=DeadLetter.Status.PENDING):
            try:
                services.dead_letter_requeue(dead_letter=dead_letter)
            except ApplicationError as exc:
                self.message_user(request, f"{dead_letter.pk}: {exc.message}", messages.WARNING)
                continue
            count += 1
        self.message_user(request, f"Requeued {count} message(s).", messages.SUCCESS)


@admin.register(PendingDeletion)
class PendingDeletionAdmin(admin.ModelAdmin):
    """Stored files waiting to be deleted (apps.core.storage); rows leave when the file is gone."""

    list_display = ("key", "attempts", "next_attempt_at", "created_at", "last_error")
    search_fields = ("key", "last_error")
    readonly_fields = [f.name for f in PendingDeletion._meta.fields]
    actions = ["attempt_now"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # deleting a row would forget its file

    @admin.action(description="Try to delete the selected files now")
    def attempt_now(self, request, queryset) -> None:
        results = [storage.pending_deletion_attempt(row=row) for row in queryset]
        self.message_user(
            request,
            f"Deleted {sum(results)} file(s); {results.count(False)} still failing.",
            messages.SUCCESS if all(results) else messages.WARNING,
        )
