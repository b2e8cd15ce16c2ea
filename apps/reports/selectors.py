"""Reads of reports, always scoped to one organisation."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.core.exceptions import NotFoundError

from .models import Report


def report_list(*, organisation, kind: str | None = None) -> QuerySet[Report]:
    queryset = Report.objects.filter(organisation=organisation)
    if kind:
        queryset = queryset.filter(kind=kind)
    # The id breaks ties: reports created in the same instant keep one order across pages.
    return queryset.order_by("-created_at", "-id")


def report_get(*, organisation, report_id) -> Report:
    try:
        return Report.objects.get(organisation=organisation, pk=report_id)
    except (Report.DoesNotExist, ValueError):
        raise NotFoundError("No such report.", code="report_not_found") from None
