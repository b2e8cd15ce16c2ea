"""The delivery guarantees of the Celery app; a change here must be deliberate."""

from django.conf import settings

from lexiscore.celery import app, route_by_module
from workers.queues import Queue


def test_every_queue_in_the_enum_is_declared():
    declared = {q.name for q in app.conf.task_queues}

    assert declared == {
        "transcription.cpu",
        "transcription.gpu",
        "email",
        "reports",
        "webhooks",
        "maintenance",
        "dead_letter",
    }
    assert declared == {str(q) for q in Queue}


def test_messages_are_json_only():
    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"
    assert app.conf.accept_content == ["json"]


def test_tasks_are_acknowledged_late_and_requeued_when_the_worker_dies():
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    # A broker blip lets running tasks finish (tests/delivery/test_worker_shutdown.py).
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False


def test_visibility_timeout_exceeds_the_longest_task_everywhere():
    visibility = app.conf.broker_transport_options["visibility_timeout"]

    assert visibility > settings.CELERY_MAX_TASK_TIME_LIMIT + 600
    assert app.conf.result_backend_transport_options["visibility_timeout"] == visibility
    assert app.conf.visibility_timeout == visibility
    assert visibility > app.conf.task_time_limit


def test_soft_time_limit_comes_before_the_hard_limit():
    assert app.conf.task_soft_time_limit < app.conf.task_time_limit


def test_worker_children_are_recycled_to_contain_leaks():
    assert 0 < app.conf.worker_max_tasks_per_child <= 1000
    assert app.conf.worker_max_memory_per_child > 0


def test_tasks_are_routed_by_their_module():
    assert route_by_module("workers.transcription.transcribe_job", (), {}, {}) == {
        "queue": "transcription.cpu",
        "routing_key": "transcription.cpu",
    }
    assert route_by_module("workers.emails.send", (), {}, {})["queue"] == "email"
    assert route_by_module("workers.reports.render", (), {}, {})["queue"] == "reports"
    assert route_by_module("workers.webhooks.deliver", (), {}, {})["queue"] == "webhooks"
    assert route_by_module("workers.dead_letter.store", (), {}, {})["queue"] == "dead_letter"
    assert route_by_module("other.module.task", (), {}, {}) is None


def test_registered_lexiscore_tasks_use_late_acks():
    app.loader.import_default_modules()
    ours = {name: task for name, task in app.tasks.items() if name.startswith("workers.")}

    assert "workers.maintenance.ping" in ours
    assert all(task.acks_late for task in ours.values())
    assert all(task.reject_on_worker_lost for task in ours.values())
