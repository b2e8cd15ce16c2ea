"""Fill the usage ledger from the jobs that exist, counted as the quota counted them before it:
every job with a duration, except one that failed or was cancelled before work started. Jobs
already deleted gave their minutes back then; the ledger cannot know them."""

from django.db import migrations

BATCH = 2000


def fill(apps, schema_editor):
    TranscriptionJob = apps.get_model("audio_jobs", "TranscriptionJob")
    AudioUsage = apps.get_model("audio_jobs", "AudioUsage")
    jobs = (
        TranscriptionJob.objects.filter(duration_seconds__isnull=False)
        .exclude(status__in=["failed", "cancelled"], started_at__isnull=True)
        .order_by("pk")
        .values_list("pk", "organisation_id", "duration_seconds", "created_at")
    )
    rows = []
    for pk, organisation_id, seconds, created_at in jobs.iterator(chunk_size=BATCH):
        rows.append(
            AudioUsage(
                job_id=pk,
                organisation_id=organisation_id,
                seconds=seconds,
                job_created_at=created_at,
            )
        )
        if len(rows) >= BATCH:
            AudioUsage.objects.bulk_create(rows, ignore_conflicts=True)
            rows = []
    AudioUsage.objects.bulk_create(rows, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [("audio_jobs", "0004_audio_usage")]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
