"""`TranscriptionJob.retranscribed_from`: the job whose stored audio a job transcribes again
(`POST /jobs/<id>/retranscribe`). Nullable without a default, so adding it rewrites nothing and
the release before this one inserts jobs without it; its index is built concurrently in 0011."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audio_jobs", "0009_job_flagged_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="transcriptionjob",
            name="retranscribed_from",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="retranscriptions",
                to="audio_jobs.transcriptionjob",
            ),
        ),
    ]
