"""Stream tickets: how a browser's EventSource, which cannot send an Authorization header,
opens the feed.

`POST /api/v1/events/tickets` (a signed-in user's token) returns a ticket; the browser opens
`/api/v1/events/stream?ticket=...`. A ticket is signed (SECRET_KEY, its own salt), names the user,
the organisation and the user's token version, and is good for FEED_TICKET_SECONDS. It opens the
feed of that organisation only, nothing else: every other endpoint ignores it. Signing out
everywhere, a new password, deactivation or removal from the organisation end it at once.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import signing
from rest_framework import authentication
from rest_framework.exceptions import AuthenticationFailed

from apps.accounts.authentication import RevokedCredential, guard_authentication
from apps.accounts.models import User

SALT = "lexiscore.feed.ticket"
PARAMETER = "ticket"


def ticket_issue(*, user: User, organisation_id: Any) -> str:
    return signing.dumps(
        {"u": str(user.pk), "o": str(organisation_id), "v": user.token_version}, salt=SALT
    )


def _signed(ticket: str) -> bool:
    """The ticket's signature checks out (expired or not): no database."""
    try:
        signing.loads(ticket, salt=SALT, max_age=settings.FEED_TICKET_SECONDS)
    except signing.SignatureExpired:
        return True
    except signing.BadSignature:
        return False
    return True


class TicketExpired(AuthenticationFailed):
    # Validly signed, so no guess: not counted against the client's address.
    not_a_guess = True


class FeedTicketAuthentication(authentication.BaseAuthentication):
    """`?ticket=` on the stream endpoint. `request.auth` carries the organisation (`org`).

    A bad ticket counts as a failed authentication of the client's address
    (RATE_LIMIT_AUTH_FAILURES), as a bad token or API key does."""

    def authenticate(self, request) -> tuple[User, dict[str, str]] | None:
        ticket = request.query_params.get(PARAMETER)
        if not ticket:
            return None
        return guard_authentication(
            request, lambda: self._authenticate(ticket), genuine=lambda: _signed(ticket)
        )

    def _authenticate(self, ticket: str) -> tuple[User, dict[str, str]]:
        try:
            claims = signing.loads(ticket, salt=SALT, max_age=settings.FEED_TICKET_SECONDS)
        except signing.SignatureExpired:
            raise TicketExpired(
                "This stream ticket has expired; ask for a new one.", code="ticket_expired"
            ) from None
        except (signing.BadSignature, TypeError, ValueError):
            raise AuthenticationFailed("Invalid stream ticket.", code="invalid_ticket") from None
        try:
            user = User.objects.get(pk=claims["u"], is_active=True)
        except (KeyError, TypeError, ValueError, User.DoesNotExist):
            # Signed here: its user was deleted or deactivated since. No guess.
            raise RevokedCredential(
                "This stream ticket was revoked.", code="ticket_revoked"
            ) from None
        if claims.get("v") != user.token_version:
            raise RevokedCredential("This stream ticket was revoked.", code="ticket_revoked")
        return user, {"org": claims.get("o")}

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
