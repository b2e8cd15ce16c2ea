"""Indexes for fair dispatch (PLAN_ACTIVE_JOBS): an organisation's waiting jobs in the order they
get a place, and its jobs that hold one. Without them each dispatch decision scanned every queued
job of the whole table (41 ms with 100,000 waiting, under the organisation's dispatch lock).
Built CONCURRENTLY on PostgreSQL: the job table is written all the time."""

from django.db import migrations, models

from apps.core.migration_operations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("audio_jobs", "0005_fill_audio_usage"),
    ]

    operations = [
        AddIndexOnline(
            model_name="transcriptionjob",
            index=models.Index(
                condition=models.Q(("dispatched_at__isnull", True), ("status", "queued")),
                fields=["organisation", "priority", "created_at"],
                name="job_waiting",
            ),
        ),
        AddIndexOnline(
            model_name="transcriptionjob",
            index=models.Index(
                condition=models.Q(
                    ("status", "processing"),
                    models.Q(("dispatched_at__isnull", False), ("status", "queued")),
                    _connector="OR",
                ),
                fields=["organisation"],
                name="job_holding_place",
            ),
        ),
    ]
