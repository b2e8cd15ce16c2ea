"""The automatic quality checks of a completed job's machine transcript (apps/audio_jobs/quality.py).
Nullable, so adding them rewrites nothing and workers of the previous release keep inserting."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audio_jobs", "0007_transcript_revisions"),
    ]

    operations = [
        migrations.AddField(
            model_name="transcriptionjob",
            name="quality",
            field=models.JSONField(blank=True, help_text="Automatic quality checks.", null=True),
        ),
        migrations.AddField(
            model_name="transcriptionjob",
            name="quality_summary",
            field=models.CharField(blank=True, max_length=300, null=True),
        ),
        migrations.AddField(
            model_name="transcriptionjob",
            name="quality_warnings",
            field=models.PositiveSmallIntegerField(
                blank=True,
                help_text="Warning flags the checks raised (null: not checked).",
                null=True,
            ),
        ),
    ]
