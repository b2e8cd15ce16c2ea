"""The transcription task's own deadline: thread-pool workers get no Celery time limits."""

from __future__ import annotations

import time
from types import SimpleNamespace

from workers.transcription import _deadline


def test_the_deadline_is_the_soft_time_limit_of_the_message():
    before = time.monotonic()

    deadline = _deadline(SimpleNamespace(timelimit=(400, 340)), 570)

    assert deadline is not None
    assert before + 340 <= deadline <= time.monotonic() + 340


def test_without_limits_in_the_message_the_default_soft_limit_applies():
    deadline = _deadline(SimpleNamespace(timelimit=(None, None)), 570)

    assert deadline is not None
    assert deadline - time.monotonic() > 560


def test_no_limit_at_all_means_no_deadline():
    assert _deadline(SimpleNamespace(timelimit=None), None) is None
