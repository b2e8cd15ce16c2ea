"""Requeue processing jobs whose worker died or which ran past their hard time limit."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from apps.core.maintenance import jobs_requeue_stuck


class Command(BaseCommand):
    help = (
        "Requeue stuck jobs (stale heartbeat or past the hard limit) unless a live worker "
        "holds them."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only list them.")

    def handle(self, *args, **options) -> None:
        result = jobs_requeue_stuck(dry_run=options["dry_run"])
        verb = "would requeue" if options["dry_run"] else "requeued"
        for job_id in result["requeued"]:
            self.stdout.write(f"{verb} {job_id}")
        for job_id in result["held"]:
            self.stdout.write(f"skipped {job_id} (a live worker holds its lease)")
        self.stdout.write(f"{len(result['requeued'])} {verb}, {len(result['held'])} held")
