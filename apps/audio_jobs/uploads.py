"""Streaming upload handling: audio goes to a temp file and stops at the size limit."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler
from django.http import HttpRequest, QueryDict, UnreadablePostError
from django.utils.datastructures import MultiValueDict
from rest_framework.parsers import MultiPartParser

from apps.core.exceptions import ApplicationError


class UploadTooLarge(ApplicationError):
    status_code = 413
    code = "file_too_large"


# Set on the Django request by the upload handler when the body passes the size limit.
_TOO_LARGE_ATTRIBUTE = "upload_too_large"


def mark_upload_too_large(request: HttpRequest) -> None:
    setattr(request, _TOO_LARGE_ATTRIBUTE, True)


def upload_was_too_large(request: HttpRequest) -> bool:
    return bool(getattr(request, _TOO_LARGE_ATTRIBUTE, False))


def too_large(limit: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"The file is larger than the {limit // (1024 * 1024)} MB limit. Use a presigned upload "
        "for large files, or split the recording.",
        details={"max_bytes": limit},
    )


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Write uploads to disk (never memory) and stop reading once they pass the limit.

    A declared Content-Length over the limit is refused before any byte is read; a body without
    one (chunked) is cut off as soon as it passes. The partial temp file is deleted with the
    request's files.
    """

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.limit = settings.AUDIO_MAX_UPLOAD_BYTES
        self.received = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # The multipart envelope adds a few hundred bytes; allow 64 KiB of it.
        if content_length and content_length > self.limit + 65536:
            self._mark_too_large()
            # Returning a result skips parsing: nothing of the body is read or stored.
            return QueryDict(encoding=encoding), MultiValueDict()
        return None

    def receive_data_chunk(self, raw_data: bytes, start: int):
        self.received += len(raw_data)
        if self.received > self.limit:
            self._mark_too_large()
            self.file.close()
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)

    def _mark_too_large(self) -> None:
        if self.request is not None:
            mark_upload_too_large(self.request)


class AudioMultiPartParser(MultiPartParser):
    """DRF's multipart parser, with Django's refusals of a form answered as client errors.

    Django raises `TooManyFilesSent` / `TooManyFieldsSent` (DATA_UPLOAD_MAX_NUMBER_FILES and
    _FIELDS) and `RequestDataTooBig` (form fields over DATA_UPLOAD_MAX_MEMORY_SIZE) while parsing;
    DRF does not map them, so they would answer 500; nor `UnreadablePostError` (the client
    disconnected mid-body), answered 400 `upload_incomplete`. Files already written are closed
    (deleted) by Django's parser; the one being written when the error came, by this parser.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return self._parse(stream, media_type, parser_context)
        except BaseException:
            # Django closes the files it finished, not the one being written when the error came.
            request = (parser_context or {}).get("request")
            for handler in getattr(request, "upload_handlers", []):
                handler.upload_interrupted()
            raise

    def _parse(self, stream, media_type, parser_context):
        try:
            return super().parse(stream, media_type, parser_context)
        except UnreadablePostError as exc:
            # The client went away mid-body (or the proxy cut it off): nothing to answer, but a
            # 500 and an ERROR line would be wrong.
            raise ApplicationError(
                "The upload ended before the whole request body arrived: send it again.",
                code="upload_incomplete",
            ) from exc
        except TooManyFilesSent as exc:
            raise ApplicationError(
                "Send one audio file per request, in the `file` field.", code="too_many_files"
            ) from exc
        except TooManyFieldsSent as exc:
            raise ApplicationError("The form has too many fields.", code="too_many_fields") from exc
        except RequestDataTooBig as exc:
            raise ApplicationError(
                "The form fields (other than the file) are too large.",
                code="request_too_large",
                status_code=413,
            ) from exc
        except SuspiciousOperation as exc:
            raise ApplicationError(
                "The multipart form could not be read.", code="malformed_request"
            ) from exc


def safe_filename(name: str) -> str:
    """A display name only (never a storage key): no paths, controls or quotes, bounded."""
    name = unicodedata.normalize("NFC", Path(name or "").name)
    name = "".join(c for c in name if c.isprintable() and c not in '"\\/')
    return name.strip(" .")[:200] or "audio"
