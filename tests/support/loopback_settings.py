"""Test settings for worker subprocesses that deliver webhooks to a receiver on loopback.

`WEBHOOK_ALLOW_LOOPBACK` is deliberately never read from the environment (see
lexiscore/settings/base.py), so a test worker that must reach `tests.notify_support.Receiver`
runs with this module as DJANGO_SETTINGS_MODULE; everything else is lexiscore.settings.test.
"""

from lexiscore.settings.test import *  # noqa: F403

WEBHOOK_ALLOW_LOOPBACK = True
