"""One export in progress per requester (member scope) and one per organisation (organisation
scope), in place of one per organisation whatever its scope."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reports", "0004_report_export"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="report",
            name="report_one_pending_export",
        ),
        migrations.AddConstraint(
            model_name="report",
            constraint=models.UniqueConstraint(
                condition=models.Q(
                    ("export_scope", "member"),
                    ("kind", "export"),
                    ("status__in", ["queued", "running"]),
                ),
                fields=("organisation", "created_by"),
                name="report_one_pending_member_export",
            ),
        ),
        migrations.AddConstraint(
            model_name="report",
            constraint=models.UniqueConstraint(
                condition=models.Q(
                    ("export_scope", "organisation"),
                    ("kind", "export"),
                    ("status__in", ["queued", "running"]),
                ),
                fields=("organisation",),
                name="report_one_pending_org_export",
            ),
        ),
    ]
