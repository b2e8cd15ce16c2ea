"""Logging filter that stamps every record with the current request id and job id."""

import logging

from .context import job_id_var, request_id_var


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or "-"
        if not getattr(record, "job_id", None):
            record.job_id = job_id_var.get() or "-"
        return True
