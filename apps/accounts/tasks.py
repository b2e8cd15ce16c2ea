"""Tasks of the accounts app, on the email queue: the account-dependent half of the public
requests that email an address (registration, a verification link, a password reset).

Those endpoints must not tell who has an account, by their answer or by their time. The request
does the same work for every address (validation, rate limits, and for a registration the
password hash) and publishes one of these; whether the address has an account, and so what
happens (a new account, an "account exists" notice, a link, or nothing), is decided here, where
the client does not wait for it. Registered with the app (AccountsConfig.ready); published to
the email queue (`QUEUE`), whose workers send what these decide.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.base import LexisTask
from workers.queues import Queue

QUEUE = str(Queue.EMAIL)


@shared_task(name="apps.accounts.tasks.register", base=LexisTask)
def register(sealed: str) -> None:
    """Create the account, or tell the address's owner one exists (`sealed`: the encrypted
    registration, see `services.users.user_register`)."""
    from .services.users import registration_complete, registration_open

    registration_complete(**registration_open(sealed))


@shared_task(name="apps.accounts.tasks.send_verification", base=LexisTask)
def send_verification(email: str, meta: dict[str, Any]) -> None:
    from .network import RequestMeta
    from .services.users import verification_send

    verification_send(email=email, meta=RequestMeta(**meta))


@shared_task(name="apps.accounts.tasks.send_password_reset", base=LexisTask)
def send_password_reset(email: str, meta: dict[str, Any]) -> None:
    from .network import RequestMeta
    from .services.users import password_reset_send

    password_reset_send(email=email, meta=RequestMeta(**meta))
