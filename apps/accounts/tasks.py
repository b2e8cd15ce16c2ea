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


# A message sealed under a key this worker does not have yet (web restarted with a new
# FIELD_ENCRYPTION_KEYS before the workers) is tried again every minute for half an hour, then
# dead-lettered (requeue it once the worker has the key): the workers usually get it minutes later.
KEY_WAIT_SECONDS = 60
KEY_WAIT_TRIES = 30


def _open(task: Any, sealed: str) -> dict[str, Any]:
    from apps.core.crypto import DecryptionError

    from .services.users import request_open

    try:
        return request_open(sealed)
    except DecryptionError as exc:
        try:
            raise task.retry(
                exc=exc, countdown=KEY_WAIT_SECONDS, max_retries=KEY_WAIT_TRIES
            ) from exc
        finally:
            # Celery keeps `max_retries` given to retry() on the shared task object, where its
            # autoretry would use it for every later transient error of this task in this
            # process (30 tries with backoff up to 10 min, instead of 5).
            task.__dict__.pop("override_max_retries", None)


@shared_task(name="apps.accounts.tasks.register", base=LexisTask, bind=True)
def register(self: Any, sealed: str) -> None:
    """Create the account, or tell the address's owner one exists (`sealed`: the encrypted
    registration, see `services.users.user_register`)."""
    from .services.users import registration_complete

    registration_complete(**_open(self, sealed))


@shared_task(name="apps.accounts.tasks.send_verification", base=LexisTask, bind=True)
def send_verification(self: Any, sealed: str) -> None:
    from .services.users import verification_send

    verification_send(**_open(self, sealed))


@shared_task(name="apps.accounts.tasks.send_password_reset", base=LexisTask, bind=True)
def send_password_reset(self: Any, sealed: str) -> None:
    from .services.users import password_reset_send

    password_reset_send(**_open(self, sealed))
