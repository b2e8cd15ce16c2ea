"""Legal hold on a job (apps/audio_jobs/holds.py). The columns are nullable or have a constant
default (no table rewrite); the partial index behind `?legal_hold=true` is built CONCURRENTLY on
PostgreSQL, as the job table is written all the time."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from apps.core.migration_operations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("audio_jobs", "0012_pii_redaction"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="transcriptionjob",
            name="legal_hold_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="transcriptionjob",
            name="legal_hold_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="transcriptionjob",
            name="legal_hold_reason",
            field=models.CharField(blank=True, max_length=500),
        ),
        AddIndexOnline(
            model_name="transcriptionjob",
            index=models.Index(
                condition=models.Q(("legal_hold_at__isnull", False)),
                fields=["organisation", "-created_at"],
                name="job_org_held",
            ),
        ),
    ]
