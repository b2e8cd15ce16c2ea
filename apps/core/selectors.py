from __future__ import annotations

from django.db.models import QuerySet

from .models import DeadLetter


def dead_letter_list(*, status: str | None = None, task_name: str | None = None) -> QuerySet:
    queryset = DeadLetter.objects.all()
    if status:
        queryset = queryset.filter(status=status)
    if task_name:
        queryset = queryset.filter(task_name=task_name)
    return queryset
