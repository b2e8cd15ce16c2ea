"""Indexes of this release, built CONCURRENTLY on PostgreSQL (the job and transcript tables are
written all the time):

* `transcript_text_search`: GIN over `to_tsvector('simple', COALESCE(text, ''))`, which serves
  `GET /jobs?q=` (apps/audio_jobs/selectors.job_list builds the same expression, so the planner
  can use it). PostgreSQL only and kept out of the model state (`AddPostgreSQLIndexOnline`):
  SQLite, where the search falls back to a scan, has no such index.
* `job_retranscribed_from`: the jobs transcribed again from a job, which deleting it sets to null
  (without it, every job deletion would scan the job table).
"""

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import migrations, models

from apps.core.migration_operations import AddIndexOnline, AddPostgreSQLIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("audio_jobs", "0010_job_retranscribed_from"),
    ]

    operations = [
        AddIndexOnline(
            model_name="transcriptionjob",
            index=models.Index(
                condition=models.Q(("retranscribed_from__isnull", False)),
                fields=["retranscribed_from"],
                name="job_retranscribed_from",
            ),
        ),
        AddPostgreSQLIndexOnline(
            model_name="transcript",
            index=GinIndex(SearchVector("text", config="simple"), name="transcript_text_search"),
        ),
    ]
