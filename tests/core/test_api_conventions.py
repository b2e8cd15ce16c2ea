"""Conventions every list and route of the API keeps: both spellings of a path, strict page
parameters, a stable order across pages, 406 for an unknown format, plain error bodies."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from django.utils import timezone

from apps.accounts.models import Role
from apps.reports.models import Report, ReportFormat, ReportKind
from apps.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.factories import bearer, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return member(Role.OWNER)


@pytest.fixture
def auth(owner):
    return bearer(owner.user, owner.organisation)


def _reports(owner, count: int, *, same_instant: bool) -> set[str]:
    """`count` reports; created in one instant when `same_instant` (a bulk import, a fast
    client), which only a tie-breaking order pages through without repeats."""
    now = timezone.now()
    rows = Report.objects.bulk_create(
        Report(
            organisation=owner.organisation,
            created_by=owner.user,
            kind=ReportKind.USAGE,
            format=ReportFormat.CSV,
            period_start=now.date() - timedelta(days=7),
            period_end=now.date(),
        )
        for _ in range(count)
    )
    Report.objects.filter(pk__in=[r.pk for r in rows]).update(
        created_at=now if same_instant else now - timedelta(seconds=1)
    )
    return {str(r.pk) for r in rows}


@pytest.mark.parametrize("path", ["/api/v1/reports", "/api/v1/reports/"])
def test_a_post_without_or_with_the_trailing_slash_creates_the_report(client, auth, path):
    """A 301 to the other spelling would be followed as a GET: a list, and no report."""
    response = client.post(
        path, {"kind": "usage", "format": "csv"}, content_type="application/json", **auth
    )

    assert response.status_code == 202, response.content
    assert Report.objects.filter(pk=response.json()["id"]).exists()


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/", "/api/v1/me", "/api/v1/me/"])
def test_reads_answer_on_both_spellings_of_a_path(client, auth, path):
    assert client.get(path, **auth).status_code == 200


def test_a_path_that_matches_nothing_either_way_is_still_404(client, auth):
    response = client.get("/api/v1/nothing-here/", **auth)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "page=-1",
        "page=abc",
        "page=last",
        "page_size=0",
        "page_size=abc",
        "page=1.5",
        "page=" + "9" * 4301,  # int() refuses over 4300 digits: it was a 500
        "page_size=" + "9" * 4301,
        "page=\uff11",  # a fullwidth digit: isdigit(), but not a number the API takes
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/reports/", "/api/v1/members/", "/api/v1/jobs"])
def test_a_malformed_page_parameter_is_a_400_on_every_list(client, auth, path, query):
    response = client.get(f"{path}?{query}", **auth)

    assert response.status_code == 400, response.content
    body = response.json()["error"]
    assert body["code"] == "validation_error"
    assert set(body["details"]) == {query.split("=")[0]}


def test_a_page_past_the_end_is_404_and_a_huge_page_size_is_capped(client, auth, owner):
    _reports(owner, 3, same_instant=False)

    past = client.get("/api/v1/reports/?page=999999999", **auth)
    capped = client.get("/api/v1/reports/?page_size=1000000000000", **auth)
    padded = client.get("/api/v1/reports/?page_size=0000000003", **auth)

    assert past.status_code == 404 and past.json()["error"]["code"] == "not_found"
    assert capped.status_code == 200 and len(capped.json()["results"]) == 3
    assert padded.status_code == 200 and len(padded.json()["results"]) == 3


def test_reports_created_in_one_instant_page_through_without_repeats(client, auth, owner):
    created = _reports(owner, 23, same_instant=True)

    seen = []
    for page in (1, 2, 3):
        response = client.get(f"/api/v1/reports/?page={page}&page_size=10", **auth)
        seen += [row["id"] for row in response.json()["results"]]

    assert len(seen) == 23 and set(seen) == created


def test_every_paginated_list_is_ordered_by_a_unique_key_last(owner):
    """Rows that tie on the sort key (one instant) come back in any order PostgreSQL likes, per
    query: pages of such a list repeat some rows and skip others. The id, last, makes the order
    total."""
    from apps.reports.selectors import report_list
    from apps.webhooks.selectors import delivery_list, endpoint_list

    endpoint = WebhookEndpoint.objects.create(
        organisation=owner.organisation,
        url="https://hooks.example.com/x",
        secret="whsec_test",
        event_types=["job.completed"],
    )
    lists = {
        "reports": report_list(organisation=owner.organisation),
        "reports by kind": report_list(organisation=owner.organisation, kind="usage"),
        "webhook endpoints": endpoint_list(organisation=owner.organisation),
        "deliveries": delivery_list(organisation=owner.organisation, endpoint_id=endpoint.pk),
    }

    last_keys = {name: qs.query.order_by[-1] for name, qs in lists.items()}
    assert last_keys == dict.fromkeys(lists, "-id")


def test_webhook_endpoints_and_deliveries_created_in_one_instant_page_through_without_repeats(
    client, auth, owner
):
    now = timezone.now()
    endpoints = WebhookEndpoint.objects.bulk_create(
        WebhookEndpoint(
            organisation=owner.organisation,
            url=f"https://hooks.example.com/{i}",
            secret="whsec_test",
            event_types=["job.completed"],
        )
        for i in range(12)
    )
    WebhookEndpoint.objects.update(created_at=now)
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            organisation=owner.organisation,
            endpoint=endpoints[0],
            event_id=f"evt_{i}",
            event_type="job.completed",
            payload={},
        )
        for i in range(12)
    )
    WebhookDelivery.objects.update(created_at=now)

    def walk(path: str) -> list[str]:
        rows: list[str] = []
        for page in (1, 2, 3):
            rows += [
                r["id"]
                for r in client.get(f"{path}?page={page}&page_size=5", **auth).json()["results"]
            ]
        return rows

    listed = walk("/api/v1/webhooks/endpoints/")
    delivered = walk(f"/api/v1/webhooks/endpoints/{endpoints[0].pk}/deliveries/")

    assert sorted(listed) == sorted(str(e.pk) for e in endpoints)
    assert sorted(delivered) == sorted(str(d.pk) for d in deliveries)


@pytest.mark.parametrize("path", ["/api/v1/reports/", "/api/v1/jobs", "/api/v1/members/"])
def test_an_unknown_format_is_406_not_404(client, auth, path):
    response = client.get(f"{path}?format=xml", **auth)

    assert response.status_code == 406
    body = response.json()["error"]
    assert body["code"] == "not_acceptable"
    assert "xml" in body["message"] and "json" in body["message"]


def test_the_schema_views_errors_are_plain_error_bodies(client):
    """Its YAML renderer wrote DRF's ErrorDetail as a mapping: `message: {string:, code:}`."""
    response = client.get("/api/v1/schema/?format=xml")

    assert response.status_code == 406
    body = yaml.safe_load(response.content)["error"]
    assert body["code"] == "not_acceptable"
    assert isinstance(body["message"], str)


def test_a_misspelt_notification_preference_is_refused_not_ignored(client, auth):
    response = client.patch(
        "/api/v1/notification-preferences/",
        {"jobs": False},
        content_type="application/json",
        **auth,
    )

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"jobs": ["Unknown field."]}


def test_the_schema_marks_unset_webhook_timestamps_nullable(client):
    schema = yaml.safe_load(client.get("/api/v1/schema/").content)["components"]["schemas"]

    assert schema["EndpointOutput"]["properties"]["disabled_at"]["nullable"] is True
    delivery = schema["DeliveryOutput"]["properties"]
    assert delivery["next_attempt_at"]["nullable"] is True
    assert delivery["delivered_at"]["nullable"] is True
    paged = {
        operation["operationId"]: {p["name"] for p in operation.get("parameters", [])}
        for path in yaml.safe_load(client.get("/api/v1/schema/").content)["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for operation_id in ("reports_list", "webhook_endpoints_list", "webhook_deliveries_list"):
        assert {"page", "page_size"} <= paged[operation_id]


def test_the_other_spelling_is_served_but_reversed_and_documented_as_written(client):
    from django.urls import reverse

    paths = yaml.safe_load(client.get("/api/v1/schema/").content)["paths"]

    assert reverse("v1:jobs", kwargs={"version": "v1"}) == "/api/v1/jobs"
    assert reverse("v1:reports", kwargs={"version": "v1"}) == "/api/v1/reports/"
    assert "/api/v1/jobs" in paths and "/api/v1/jobs/" not in paths
    assert "/api/v1/reports/" in paths and "/api/v1/reports" not in paths


def test_both_spellings_count_under_the_written_name_and_show_one_breadcrumb(client, auth, owner):
    from rest_framework.utils.breadcrumbs import get_breadcrumbs

    from apps.core.metrics import view_label

    report = next(iter(_reports(owner, 1, same_instant=False)))
    written = client.get("/api/v1/reports/", **auth)
    other = client.get("/api/v1/reports", **auth)

    assert view_label(written.wsgi_request) == view_label(other.wsgi_request) == "v1:reports"
    crumbs = [name for name, _url in get_breadcrumbs(f"/api/v1/reports/{report}/")]
    assert len(crumbs) == len(set(crumbs))
