"""The queues every LexisCore task runs on; routing and worker commands use this one list."""

from enum import StrEnum


class Queue(StrEnum):
    TRANSCRIPTION_CPU = "transcription.cpu"
    TRANSCRIPTION_GPU = "transcription.gpu"
    EMAIL = "email"
    REPORTS = "reports"
    WEBHOOKS = "webhooks"
    MAINTENANCE = "maintenance"
    DEAD_LETTER = "dead_letter"


# Tasks are routed by the module that defines them.
MODULE_ROUTES: dict[str, Queue] = {
    "workers.transcription": Queue.TRANSCRIPTION_CPU,
    "workers.emails": Queue.EMAIL,
    "workers.reports": Queue.REPORTS,
    "workers.webhooks": Queue.WEBHOOKS,
    "workers.maintenance": Queue.MAINTENANCE,
    "workers.dead_letter": Queue.DEAD_LETTER,
}
