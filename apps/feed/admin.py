"""The live feed's events, read-only: what an organisation's clients were told, and when."""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from apps.core.admin import EstimatedCountPaginator, ReadOnlyAdminMixin, fixed_choices_filter

from .models import FeedEvent, FeedEventType


@admin.register(FeedEvent)
class FeedEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # Events are written by the services that make the changes and pruned by beat after
    # FEED_RETENTION_HOURS: an edited or deleted row would rewrite what clients were told.

    list_display = ("id", "created_at", "type", "organisation", "subject_id")
    # The table takes an event per job change (progress included): no filter may scan it whole
    # (the type filter's options are the known types), and it is not counted whole per page view.
    list_filter = (fixed_choices_filter("type", "type", FeedEventType.choices),)
    search_fields = ("subject_id", "organisation")  # see get_search_results
    list_select_related = ("organisation",)
    ordering = ("-id",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    fields = readonly_fields = ("id", "created_at", "type", "organisation", "subject_id", "data")
    actions = None

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[FeedEvent], search_term: str
    ) -> tuple[QuerySet[FeedEvent], bool]:
        """A job's, report's or organisation's id finds its events; anything else finds none
        (a text search would cast every id of the table to text)."""
        if not search_term.strip():
            return queryset, False
        try:
            key = uuid.UUID(search_term.strip())
        except ValueError:
            return queryset.none(), False
        return queryset.filter(Q(subject_id=key) | Q(organisation_id=key)), False
