from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Accounts and organisations"

    def ready(self) -> None:
        from auditlog.registry import auditlog
        from django.db.models.signals import post_delete, post_save

        # checks, schema and tasks register themselves (tasks: with Celery, for the workers)
        from . import checks, models, principals, schema, tasks  # noqa: F401

        # Cached principals (apps.accounts.principals) go stale on any change to these.
        for model, receiver in (
            (models.User, principals.on_user_change),
            (models.Membership, principals.on_membership_change),
            (models.Organisation, principals.on_organisation_change),
        ):
            uid = f"principals-{model._meta.model_name}"
            post_save.connect(receiver, sender=model, dispatch_uid=f"{uid}-save")
            post_delete.connect(receiver, sender=model, dispatch_uid=f"{uid}-delete")

        auditlog.register(
            models.User,
            exclude_fields=["password", "last_login", "token_version"],
        )
        auditlog.register(models.Organisation)
        auditlog.register(models.Membership)
        auditlog.register(models.Invitation, exclude_fields=["token_hash"])
        auditlog.register(models.ApiKey, exclude_fields=["key_hash", "last_used_at"])
