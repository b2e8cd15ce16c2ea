from django.apps import AppConfig


class OpenAICompatConfig(AppConfig):
    name = "apps.openai_compat"
    label = "openai_compat"
    verbose_name = "OpenAI-compatible API"

    def ready(self) -> None:
        # The Bearer API key scheme registers itself with drf-spectacular.
        from . import schema  # noqa: F401
