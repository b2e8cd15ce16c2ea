"""Errors of the accounts app (all render as the standard error body)."""

from rest_framework import status
from rest_framework.exceptions import AuthenticationFailed

from apps.core.exceptions import ApplicationError


class Forbidden(ApplicationError):
    """The caller is in the organisation, but their role does not allow this."""

    status_code = status.HTTP_403_FORBIDDEN
    code = "insufficient_role"


class InvalidLink(ApplicationError):
    """A verification, reset or invitation token that is malformed, tampered with or expired."""

    code = "invalid_token"

    def __init__(self) -> None:
        super().__init__("This link is invalid or has expired.")


INVALID_CREDENTIALS = "No active account found with the given credentials."


class InvalidCredentials(AuthenticationFailed):
    default_detail = INVALID_CREDENTIALS
    default_code = "invalid_credentials"


class InvalidToken(AuthenticationFailed):
    default_detail = "Token is invalid or expired."
    default_code = "token_not_valid"
