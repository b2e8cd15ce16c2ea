from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "apps.reports"
    label = "reports"
    verbose_name = "Reports"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from apps.core.generations import invalidate_on_change

        from .models import READ_CACHE, Report

        receiver = invalidate_on_change(READ_CACHE, "organisation_id")
        post_save.connect(receiver, sender=Report, weak=False, dispatch_uid="reports-read-cache")
        post_delete.connect(receiver, sender=Report, weak=False, dispatch_uid="reports-read-cache")
