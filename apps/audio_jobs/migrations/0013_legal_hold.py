"""Legal hold on a job (apps/audio_jobs/holds.py). The columns are nullable or have a constant
default (no table rewrite), each kept when it is already there (the migration is not atomic: a
run stopped half way can run again); the foreign key has no index of its own; the partial index
behind `?legal_hold=true` is built CONCURRENTLY on PostgreSQL, as the job table is written all
the time."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from apps.core.migration_operations import AddFieldIfMissing, AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("audio_jobs", "0012_pii_redaction"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddFieldIfMissing(
            model_name="transcriptionjob",
            name="legal_hold_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        AddFieldIfMissing(
            model_name="transcriptionjob",
            name="legal_hold_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
                db_index=False,
            ),
        ),
        AddFieldIfMissing(
            model_name="transcriptionjob",
            name="legal_hold_reason",
            field=models.CharField(blank=True, db_default="", max_length=500),
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
