"""One pending dead letter per task id (a unique index on the pending rows).

Two deliveries of one message failing at once could each insert a pending row; after that every
record of the message raised MultipleObjectsReturned. Rows written that way before this migration
are merged first: the newest pending row of a task id stays (it holds the latest error), the
older ones go. They are copies of one message, so nothing an operator could requeue is lost.
"""

from django.db import migrations, models


def merge_duplicate_pending(apps, schema_editor):
    DeadLetter = apps.get_model("core", "DeadLetter")
    duplicated = (
        DeadLetter.objects.filter(status="pending")
        .values("task_id")
        .annotate(rows=models.Count("id"))
        .filter(rows__gt=1)
        .values_list("task_id", flat=True)
    )
    for task_id in list(duplicated):
        rows = DeadLetter.objects.filter(status="pending", task_id=task_id).order_by(
            "-created_at", "-id"
        )
        keep = rows.first()
        rows.exclude(pk=keep.pk).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_pending_deletion"),
    ]

    operations = [
        migrations.RunPython(merge_duplicate_pending, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="deadletter",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "pending")),
                fields=("task_id",),
                name="deadletter_one_pending_per_task",
            ),
        ),
    ]
