"""The index behind `GET /jobs?flagged=true` (an organisation's jobs with quality warnings, newest
first). Built CONCURRENTLY on PostgreSQL: the job table is written all the time."""

from django.db import migrations, models

from apps.core.migration_operations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("audio_jobs", "0008_job_quality"),
    ]

    operations = [
        AddIndexOnline(
            model_name="transcriptionjob",
            index=models.Index(
                condition=models.Q(("quality_warnings__gt", 0)),
                fields=["organisation", "-created_at"],
                name="job_org_flagged",
            ),
        ),
    ]
