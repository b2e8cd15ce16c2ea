"""Writes of the accounts app (one module per area; import from here).

Every security-relevant step records an audit event through `apps.audit.services.audit_record`.
"""

from ..exceptions import InvalidCredentials, InvalidToken
from ..tokens import TokenPair
from ._common import user_tokens_revoke
from .api_keys import api_key_create, api_key_mark_used, api_key_revoke
from .auth import (
    auth_login,
    auth_logout,
    auth_logout_all,
    auth_refresh,
    tokens_flush_expired,
)
from .organisations import (
    invitation_accept,
    invitation_create,
    invitation_resend,
    invitation_resend_by_operator,
    invitation_revoke,
    invitation_revoke_by_operator,
    membership_change_role,
    membership_leave,
    membership_remove,
    organisation_create,
    organisation_deactivate,
    organisation_reactivate,
    organisation_update,
)
from .users import (
    email_verification_resend,
    password_change,
    password_change_in_session,
    password_reset_confirm,
    password_reset_request,
    password_set_by_operator,
    user_deactivate,
    user_delete,
    user_reactivate,
    user_register,
    user_update_profile,
    user_verify_email,
)

__all__ = [
    "InvalidCredentials",
    "InvalidToken",
    "TokenPair",
    "api_key_create",
    "api_key_mark_used",
    "api_key_revoke",
    "auth_login",
    "auth_logout",
    "auth_logout_all",
    "auth_refresh",
    "email_verification_resend",
    "invitation_accept",
    "invitation_create",
    "invitation_resend",
    "invitation_resend_by_operator",
    "invitation_revoke",
    "invitation_revoke_by_operator",
    "membership_change_role",
    "membership_leave",
    "membership_remove",
    "organisation_create",
    "organisation_deactivate",
    "organisation_reactivate",
    "organisation_update",
    "password_change",
    "password_change_in_session",
    "password_reset_confirm",
    "password_reset_request",
    "password_set_by_operator",
    "tokens_flush_expired",
    "user_deactivate",
    "user_delete",
    "user_reactivate",
    "user_register",
    "user_tokens_revoke",
    "user_update_profile",
    "user_verify_email",
]
