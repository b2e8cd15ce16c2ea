from django.contrib import admin, messages

from . import services
from .models import DeadLetter


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
            services.dead_letter_requeue(dead_letter=dead_letter)
            count += 1
        self.message_user(request, f"Requeued {count} message(s).", messages.SUCCESS)
