import logging
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.paginator import Paginator
from django.db import DatabaseError, connections
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property

from . import services, storage
from .exceptions import ApplicationError
from .models import DeadLetter, PendingDeletion

logger = logging.getLogger(__name__)


def apply_each(model_admin, request, rows, action: Callable[[Any], Any], *, done: str) -> int:
    """An admin action's service call on each row: a row the service refuses (ApplicationError)
    is reported and skipped, the others go on; `done` (with `{count}`) reports the rest."""
    count = 0
    for row in rows:
        try:
            action(row)
        except ApplicationError as exc:
            model_admin.message_user(request, f"{row.pk}: {exc.message}", messages.WARNING)
            continue
        except DatabaseError:
            # A lock wait past the statement timeout, a restarting database: the page says so
            # (instead of a 500 after the rows before it were done), and the action can be run
            # again on the same rows.
            logger.warning("Admin action stopped at %s", row.pk, exc_info=True)
            model_admin.message_user(
                request,
                f"{row.pk}: the database did not answer in time; run the action again.",
                messages.ERROR,
            )
            continue
        count += 1
    model_admin.message_user(request, done.format(count=count), messages.SUCCESS)
    return count


class ReadOnlyAdminMixin:
    """Rows operators may read but never add, edit or delete in the admin (written by services:
    an edit would rewrite a record, a delete forget it)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ModelChangeActionsMixin:
    """For an admin whose form is read-only for everyone (`has_change_permission` is False) but
    whose actions change rows through a service (requeue a dead letter, send an email again).

    Django offers and runs an action to anyone who may view the list unless the action names
    the permissions it needs, and `permissions=["change"]` would hide it from everyone here:
    such actions declare `@admin.action(permissions=["model_change"])`, which asks for the
    user's own change permission on the model (`<app>.change_<model>`; a superuser has it).
    """

    opts: Any

    def has_model_change_permission(self, request: HttpRequest) -> bool:
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")


class EstimatedCountPaginator(Paginator):
    """The admin's paginator for tables that only grow (the audit trail, jobs, the live feed).

    The changelist counts its queryset on every page view; unfiltered, that is a COUNT(*) over
    the whole table, a scan that grows with it. On PostgreSQL an unfiltered list is counted from
    the planner's estimate (`pg_class.reltuples`, kept by autovacuum's ANALYZE) once that is
    above `estimate_threshold`; below it, filtered, or on another database, exactly. The
    estimate drifts from the truth between ANALYZE runs: the last page link may then show an
    empty page, or the very last rows may be reached only by filtering or sorting.
    """

    estimate_threshold = 100_000

    @cached_property
    def count(self) -> int:
        estimate = self._estimate()
        if estimate is not None and estimate > self.estimate_threshold:
            return estimate
        return super().count

    def _estimate(self) -> int | None:
        queryset = self.object_list
        query = getattr(queryset, "query", None)
        if query is None or query.where or query.is_sliced or query.combinator or query.distinct:
            return None  # not a whole table: filtered, searched, sliced or combined
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                [connection.ops.quote_name(queryset.model._meta.db_table)],
            )
            row = cursor.fetchone()
        # -1: never analysed (PostgreSQL 14+); None: no such relation.
        return int(row[0]) if row is not None and row[0] is not None and row[0] >= 0 else None


def fixed_choices_filter(field_name: str, title: str, choices) -> type[admin.SimpleListFilter]:
    """A list filter whose options are known in advance: Django's default filter for a field
    without `choices` runs SELECT DISTINCT over the whole table on every page view, a full scan
    of a table that only grows (jobs, the audit trail)."""

    class FixedChoicesFilter(admin.SimpleListFilter):
        parameter_name = field_name

        def lookups(self, request, model_admin) -> list[tuple[str, str]]:
            return [(str(value), str(label)) for value, label in choices]

        def queryset(self, request, queryset):
            if self.value() is None:
                return queryset
            return queryset.filter(**{field_name: self.value()})

    FixedChoicesFilter.title = title
    return FixedChoicesFilter


@admin.register(DeadLetter)
class DeadLetterAdmin(ModelChangeActionsMixin, admin.ModelAdmin):
    list_display = ("created_at", "task_name", "queue", "status", "attempts", "exception_type")
    list_filter = ("status", "queue", "task_name")
    search_fields = ("task_id", "task_name", "error", "request_id")
    readonly_fields = [f.name for f in DeadLetter._meta.fields]
    actions = ["requeue"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Requeue the selected messages", permissions=["model_change"])
    def requeue(self, request, queryset) -> None:
        apply_each(
            self,
            request,
            queryset.filter(status=DeadLetter.Status.PENDING),
            lambda dead_letter: services.dead_letter_requeue(dead_letter=dead_letter),
            done="Requeued {count} message(s).",
        )


@admin.register(PendingDeletion)
class PendingDeletionAdmin(ModelChangeActionsMixin, admin.ModelAdmin):
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

    # Its deletions were decided already: it only brings their time forward (change, not delete).
    @admin.action(description="Try to delete the selected files now", permissions=["model_change"])
    def attempt_now(self, request, queryset) -> None:
        # Rows written ahead of time (attempts 0, due in the future) guard files still in use:
        # an upload whose job has not committed yet, a presigned form that can still be sent.
        # Deleting those now would take audio from under a job; they are left to come due.
        now = timezone.now()
        ahead = [row for row in queryset if row.attempts == 0 and row.next_attempt_at > now]
        results = [
            storage.pending_deletion_attempt(row=row) for row in queryset if row not in ahead
        ]
        text = f"Deleted {sum(results)} file(s); {results.count(False)} still failing."
        if ahead:
            text += (
                f" {len(ahead)} not tried: written ahead of time, they guard files still in use"
                " and are deleted when due."
            )
        self.message_user(
            request, text, messages.SUCCESS if all(results) and not ahead else messages.WARNING
        )
