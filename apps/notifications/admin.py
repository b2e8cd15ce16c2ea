from django.contrib import admin, messages

from apps.core.admin import ModelChangeActionsMixin

from . import services
from .models import EmailOutbox, EmailStatus


@admin.register(EmailOutbox)
class EmailOutboxAdmin(ModelChangeActionsMixin, admin.ModelAdmin):
    """Queued emails: what is pending, what failed and why. Read-only; failed ones can be sent
    again once the cause (SMTP settings, a template) is fixed."""

    list_display = ("created_at", "template", "status", "attempts", "next_try_at", "sent_at")
    list_filter = ("status", "template")
    search_fields = ("id", "dedupe_key", "last_error")
    # The context is left out: it can hold signed links (password reset, unsubscribe).
    exclude = ("context",)
    readonly_fields = [f.name for f in EmailOutbox._meta.fields if f.name != "context"]
    actions = ["requeue"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Send the selected failed emails again", permissions=["model_change"])
    def requeue(self, request, queryset) -> None:
        ids = queryset.filter(status=EmailStatus.FAILED).values_list("pk", flat=True)
        count = services.email_requeue(outbox_ids=[str(pk) for pk in ids])
        self.message_user(request, f"Published {count} email(s) again.", messages.SUCCESS)
