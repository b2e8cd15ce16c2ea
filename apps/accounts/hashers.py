"""Argon2id with cost parameters from settings (ARGON2_TIME_COST / _MEMORY_COST / _PARALLELISM).

The algorithm name stays "argon2", so hashes are interchangeable with Django's own hasher. When
the configured costs change, Django re-hashes a password at the user's next successful login
(`must_update` compares the stored parameters with these).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.hashers import Argon2PasswordHasher


class ConfiguredArgon2PasswordHasher(Argon2PasswordHasher):
    @property  # type: ignore[override]
    def time_cost(self) -> int:
        return int(settings.ARGON2_TIME_COST)

    @property  # type: ignore[override]
    def memory_cost(self) -> int:
        """KiB."""
        return int(settings.ARGON2_MEMORY_COST)

    @property  # type: ignore[override]
    def parallelism(self) -> int:
        return int(settings.ARGON2_PARALLELISM)
