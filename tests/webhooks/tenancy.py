"""Cross-tenant registrations of the webhook, report and notification endpoints."""

from __future__ import annotations

from apps.accounts.models import Organisation
from tests.tenancy import list_endpoint, object_endpoint


def _endpoint_of(organisation: Organisation) -> str:
    from apps.webhooks.models import WebhookEndpoint

    return str(
        WebhookEndpoint.objects.create(
            organisation=organisation,
            url="https://hooks.customer.test/x",
            event_types=["job.completed"],
            secret="whsec_AAAA",
        ).id
    )


def _failed_delivery_of(organisation: Organisation) -> str:
    """B's ended delivery (its id stands for both the endpoint's and the delivery's in the
    path)."""
    from apps.webhooks.models import WebhookDelivery, WebhookEndpoint

    endpoint = WebhookEndpoint.objects.get(pk=_endpoint_of(organisation))
    return str(
        WebhookDelivery.objects.create(
            organisation=organisation,
            endpoint=endpoint,
            event_id="msg_tenancy",
            event_type="job.completed",
            payload={"id": "msg_tenancy"},
            status="failed",
        ).id
    )


def _report_of(organisation: Organisation) -> str:
    from datetime import date

    from apps.reports.models import Report

    return str(
        Report.objects.create(
            organisation=organisation,
            kind="usage",
            format="csv",
            status="failed",
            period_start=date(2030, 1, 1),
            period_end=date(2030, 1, 8),
        ).id
    )


for _method, _path in [
    ("GET", "/api/v1/webhooks/endpoints/{endpoint_id}/"),
    ("DELETE", "/api/v1/webhooks/endpoints/{endpoint_id}/"),
    ("POST", "/api/v1/webhooks/endpoints/{endpoint_id}/disable/"),
    ("POST", "/api/v1/webhooks/endpoints/{endpoint_id}/enable/"),
    ("POST", "/api/v1/webhooks/endpoints/{endpoint_id}/rotate-secret/"),
    ("POST", "/api/v1/webhooks/endpoints/{endpoint_id}/test/"),
    ("GET", "/api/v1/webhooks/endpoints/{endpoint_id}/deliveries/"),
]:
    object_endpoint(_method, _path, _endpoint_of)
object_endpoint(
    "POST",
    "/api/v1/webhooks/endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver/",
    _failed_delivery_of,
)

for _method, _path in [
    ("GET", "/api/v1/reports/{report_id}/"),
    ("DELETE", "/api/v1/reports/{report_id}/"),
    ("POST", "/api/v1/reports/{report_id}/retry/"),
    ("GET", "/api/v1/reports/{report_id}/download"),
]:
    object_endpoint(_method, _path, _report_of)

list_endpoint("/api/v1/webhooks/endpoints/", _endpoint_of)
list_endpoint("/api/v1/reports/", _report_of)
