from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from . import models
        from .observability import init_sentry

        auditlog.register(models.DeadLetter)
        init_sentry()
