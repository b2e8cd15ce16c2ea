"""Reads of webhook endpoints and deliveries, scoped to one organisation."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.core.exceptions import NotFoundError

from .models import WebhookDelivery, WebhookEndpoint


def endpoint_list(*, organisation) -> QuerySet[WebhookEndpoint]:
    # The id breaks ties: rows created in the same instant keep one order across pages.
    return WebhookEndpoint.objects.filter(organisation=organisation).order_by("-created_at", "-id")


def endpoint_get(*, organisation, endpoint_id) -> WebhookEndpoint:
    try:
        return WebhookEndpoint.objects.get(organisation=organisation, pk=endpoint_id)
    except (WebhookEndpoint.DoesNotExist, ValueError):
        raise NotFoundError(
            "No such webhook endpoint.", code="webhook_endpoint_not_found"
        ) from None


def delivery_list(*, organisation, endpoint_id) -> QuerySet[WebhookDelivery]:
    endpoint = endpoint_get(organisation=organisation, endpoint_id=endpoint_id)
    return (
        WebhookDelivery.objects.filter(organisation=organisation, endpoint=endpoint)
        .prefetch_related("log")
        .order_by("-created_at", "-id")
    )
