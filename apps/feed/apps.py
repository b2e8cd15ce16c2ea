from django.apps import AppConfig


class FeedConfig(AppConfig):
    name = "apps.feed"
    label = "feed"
    verbose_name = "Live feed"

    def ready(self) -> None:
        # The stream ticket's security scheme registers itself with drf-spectacular.
        from . import schema  # noqa: F401
