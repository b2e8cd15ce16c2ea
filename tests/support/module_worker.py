"""Loaded into a test worker that outlives one test: `CeleryWorker(include=[__name__])`.

pytest-django flushes the test database after each transactional test, and Django re-creates the
content types with new ids. A worker kept for a whole module would write the next test's audit log
entries with the ids it cached before the flush (a foreign key violation at commit), so it forgets
them before every task. Production content types never change; this is for tests only.
"""

from __future__ import annotations

from typing import Any

from celery import signals


@signals.task_prerun.connect
def forget_content_type_ids(**_kwargs: Any) -> None:
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects.clear_cache()
