from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Accounts and organisations"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from . import checks, models, schema  # noqa: F401  (checks and schema register)

        auditlog.register(
            models.User,
            exclude_fields=["password", "last_login", "token_version"],
        )
        auditlog.register(models.Organisation)
        auditlog.register(models.Membership)
        auditlog.register(models.Invitation, exclude_fields=["token_hash"])
        auditlog.register(models.ApiKey, exclude_fields=["key_hash", "last_used_at"])
