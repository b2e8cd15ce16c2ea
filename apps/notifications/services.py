"""Notification preferences and signed unsubscribe links."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.core import signing

from apps.core.exceptions import ApplicationError

from .models import NotificationKind, NotificationPreference

_SALT = "lexiscore.notifications.unsubscribe"


def wants(*, user, kind: str) -> bool:
    """Whether `user` receives mail of `kind` (on unless they turned it off)."""
    if user is None or not user.is_active or not user.email:
        return False
    preference = NotificationPreference.objects.filter(user=user).first()
    return True if preference is None else bool(getattr(preference, kind))


def preference_get(*, user) -> NotificationPreference:
    preference, _ = NotificationPreference.objects.get_or_create(user=user)
    return preference


def preference_update(*, user, changes: dict[str, bool]) -> NotificationPreference:
    preference = preference_get(user=user)
    for kind, enabled in changes.items():
        if kind not in NotificationKind.values:
            raise ApplicationError(f"Unknown notification kind: {kind}", code="invalid_kind")
        setattr(preference, kind, bool(enabled))
    preference.save()
    return preference


def unsubscribe_token(*, user, kind: str) -> str:
    return signing.dumps({"u": str(user.public_id), "k": kind}, salt=_SALT, compress=True)


def unsubscribe_url(*, user, kind: str) -> str:
    query = urlencode({"token": unsubscribe_token(user=user, kind=kind)})
    return f"{settings.PUBLIC_BASE_URL}/api/v1/notifications/unsubscribe?{query}"


def unsubscribe(*, token: str) -> NotificationPreference:
    """Turn off the kind named by a signed link (links stay valid: unsubscribing is idempotent)."""
    from apps.accounts.models import User

    try:
        data = signing.loads(token, salt=_SALT)
        user = User.objects.get(public_id=data["u"])
        kind = data["k"]
    except (signing.BadSignature, User.DoesNotExist, KeyError, TypeError, ValueError):
        raise ApplicationError(
            "This unsubscribe link is invalid.", code="invalid_unsubscribe_token"
        ) from None
    return preference_update(user=user, changes={kind: False})
