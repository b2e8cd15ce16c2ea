"""Webhook endpoints and their deliveries for operators: which endpoints fail and why, every
delivery's tries, and the actions that change them through the services (audited, as through
the API). The signing secrets are never shown."""

from __future__ import annotations

from django.contrib import admin

from apps.accounts.network import RequestMeta
from apps.core.admin import EstimatedCountPaginator, ModelChangeActionsMixin, apply_each

from . import services
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

SECRET_FIELDS = ("secret", "previous_secret")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ModelChangeActionsMixin, admin.ModelAdmin):
    list_display = (
        "url",
        "organisation",
        "is_active",
        "consecutive_failures",
        "failing_since",
        "disabled_reason",
        "created_at",
    )
    list_filter = ("is_active",)
    search_fields = ("id", "url", "organisation__name", "description")
    list_select_related = ("organisation",)
    exclude = SECRET_FIELDS
    readonly_fields = [f.name for f in WebhookEndpoint._meta.fields if f.name not in SECRET_FIELDS]
    actions = ["disable_endpoints", "enable_endpoints"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_deleted_objects(self, objs, request):
        """What deleting these endpoints deletes, counted rather than listed: their deliveries
        and tries go with them (no one may delete those on their own, so Django's own check
        would refuse every endpoint that ever sent anything)."""
        objs = list(objs)
        counts = {
            WebhookEndpoint._meta.verbose_name_plural: len(objs),
            WebhookDelivery._meta.verbose_name_plural: WebhookDelivery.objects.filter(
                endpoint__in=objs
            ).count(),
        }
        return [str(endpoint) for endpoint in objs], counts, set(), []

    def delete_model(self, request, obj) -> None:
        services.endpoint_delete(
            endpoint=obj, actor=request.user, meta=RequestMeta.from_request(request)
        )

    def delete_queryset(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset.select_related("organisation"),
            lambda endpoint: self.delete_model(request, endpoint),
            done="Deleted {count} endpoint(s).",
        )

    @admin.action(description="Disable the selected endpoints", permissions=["model_change"])
    def disable_endpoints(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset.filter(is_active=True).select_related("organisation"),
            lambda endpoint: services.endpoint_disable(
                endpoint=endpoint,
                reason="Disabled by an operator.",
                actor=request.user,
                meta=RequestMeta.from_request(request),
            ),
            done="Disabled {count} endpoint(s).",
        )

    @admin.action(description="Enable the selected endpoints", permissions=["model_change"])
    def enable_endpoints(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset.filter(is_active=False).select_related("organisation"),
            lambda endpoint: services.endpoint_enable(
                endpoint=endpoint, actor=request.user, meta=RequestMeta.from_request(request)
            ),
            done="Enabled {count} endpoint(s).",
        )


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ("attempted_at", "status_code", "error", "duration_ms")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ModelChangeActionsMixin, admin.ModelAdmin):
    """Read-only; ended deliveries can be sent again (the same event and `webhook-id`, a new
    series of tries), without the API's hourly limit."""

    list_display = (
        "created_at",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "redeliveries",
    )
    list_filter = ("status", "event_type")
    search_fields = ("id", "event_id", "endpoint__url", "organisation__name")
    show_full_result_count = False
    paginator = EstimatedCountPaginator  # deliveries only grow between cleanups
    list_select_related = ("endpoint",)
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]
    actions = ["redeliver"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(
        description="Send the selected deliveries again (succeeded or failed ones)",
        permissions=["model_change"],
    )
    def redeliver(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset.select_related("endpoint__organisation"),
            lambda delivery: services.delivery_redeliver(
                endpoint=delivery.endpoint,
                delivery_id=delivery.pk,
                actor=request.user,
                meta=RequestMeta.from_request(request),
                limited=False,
            ),
            done="Sent {count} delivery(ies) again.",
        )
