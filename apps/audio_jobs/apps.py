from django.apps import AppConfig


class AudioJobsConfig(AppConfig):
    name = "apps.audio_jobs"
    label = "audio_jobs"
    verbose_name = "Audio jobs"

    def ready(self) -> None:
        from auditlog.registry import auditlog
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_delete, post_save

        from apps.core.generations import invalidate_on_change

        from . import models, search_index, transcripts

        connection_created.connect(
            search_index.register_sqlite_fold, dispatch_uid="search-sqlite-fold"
        )

        receiver = invalidate_on_change(models.READ_CACHE, "organisation_id")
        for signal in (post_save, post_delete):
            signal.connect(
                receiver, sender=models.TranscriptionJob, weak=False, dispatch_uid="jobs-read-cache"
            )
        post_delete.connect(
            transcripts.on_transcript_deleted,
            sender=models.Transcript,
            dispatch_uid="transcripts-forget-rendered",
        )

        auditlog.register(
            models.TranscriptionJob,
            # Speaker names are personal data: the audit trail outlives the job (the rename event
            # names the labels only).
            exclude_fields=[
                "progress",
                "heartbeat_at",
                "updated_at",
                "initial_prompt",
                "hotwords",
                "speaker_names",
            ],
        )
        auditlog.register(models.Upload)
