"""Only POST /jobs takes a multipart form (its parser stops at AUDIO_MAX_UPLOAD_BYTES); every other
endpoint parses JSON only and answers 415 to a form before reading it: DRF's default multipart
parser would spool any file part to disk in full, on the anonymous sign-in too."""

from __future__ import annotations

import io
from unittest import mock

import pytest
from django.core.files.uploadhandler import MemoryFileUploadHandler, TemporaryFileUploadHandler

FIELDS = {"email": "x@example.com", "password": "y" * 12, "size_bytes": "10", "filename": "a"}


@pytest.fixture
def spooled():
    """Bytes any upload handler received."""
    received: list[int] = []

    def spy(real):
        def receive(self, raw_data, start):
            received.append(len(raw_data))
            return real(self, raw_data, start)

        return receive

    with (
        mock.patch.object(
            TemporaryFileUploadHandler,
            "receive_data_chunk",
            spy(TemporaryFileUploadHandler.receive_data_chunk),
        ),
        mock.patch.object(
            MemoryFileUploadHandler,
            "receive_data_chunk",
            spy(MemoryFileUploadHandler.receive_data_chunk),
        ),
    ):
        yield received


@pytest.mark.parametrize(
    ("path", "signed_in"),
    [("/api/v1/auth/token/", False), ("/api/v1/uploads", True), ("/api/v1/reports/", True)],
)
@pytest.mark.parametrize("form", ["multipart", "urlencoded"])
def test_a_form_sent_to_an_endpoint_that_takes_json_is_refused_unread(
    api_client, auth, spooled, path, signed_in, form
):
    headers = auth if signed_in else {}
    if form == "multipart":
        body = {**FIELDS, "junk": io.BytesIO(b"\0" * (4 * 1024 * 1024))}
        response = api_client.post(path, body, format="multipart", **headers)
    else:
        response = api_client.post(
            path,
            "email=x%40example.com&password=yyyyyyyyyyyy",
            content_type="application/x-www-form-urlencoded",
            **headers,
        )

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert spooled == []


def test_json_is_still_accepted(api_client, auth):
    response = api_client.post("/api/v1/uploads", {"size_bytes": 10}, format="json", **auth)

    # Parsed (no S3 storage here): the service's answer, not the parser's.
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "presigned_upload_unavailable"
