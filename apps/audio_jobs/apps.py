from django.apps import AppConfig


class AudioJobsConfig(AppConfig):
    name = "apps.audio_jobs"
    label = "audio_jobs"
    verbose_name = "Audio jobs"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from . import models

        auditlog.register(
            models.TranscriptionJob,
            exclude_fields=["progress", "heartbeat_at", "updated_at", "initial_prompt"],
        )
        auditlog.register(models.Upload)
