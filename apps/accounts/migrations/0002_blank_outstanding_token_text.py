"""Forget the text of every recorded refresh token (simplejwt's `OutstandingToken.token`).

Tokens were recorded with their full text, which anyone able to read the table or its admin page
could use to act as the token's user until it expired. Only jti, user and expiry are needed
(apps/accounts/tokens.py), and new tokens are recorded without their text. simplejwt's own app
cannot hold this migration, so it lives here, after simplejwt's latest migration.
"""

from django.db import migrations


def blank_token_text(apps, schema_editor):
    OutstandingToken = apps.get_model("token_blacklist", "OutstandingToken")
    OutstandingToken.objects.exclude(token="").update(token="")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("token_blacklist", "0013_alter_blacklistedtoken_options_and_more"),
    ]

    operations = [
        # Not reversible in substance (the text is gone); reversing leaves the rows as they are.
        migrations.RunPython(blank_token_text, migrations.RunPython.noop, elidable=True),
    ]
