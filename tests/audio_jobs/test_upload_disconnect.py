"""A client that disconnects mid-upload: the WSGI input raises OSError (gunicorn: a socket error or
NoMoreData), which Django reads as UnreadablePostError. The answer is 400 `upload_incomplete`, not
a 500 with an ERROR line, and the half-written temp file is deleted at once."""

from __future__ import annotations

import io
import logging

from tests.audio_jobs.conftest import media_files
from tests.audio_jobs.test_api import (  # noqa: F401 (fixtures)
    BOUNDARY,
    JOBS,
    clip,
    media_root,
    multipart,
    upload_tmp,
)


class Disconnecting(io.RawIOBase):
    """A request body that ends (the client went away) after `cut` bytes."""

    def __init__(self, data: bytes, cut: int):
        self._buffer = io.BytesIO(data[:cut])

    def readable(self) -> bool:
        return True

    def read(self, size=-1):
        chunk = self._buffer.read(size if size and size > 0 else 65536)
        if not chunk:
            raise OSError("client disconnected")
        return chunk

    def readline(self, size=-1):
        return self.read(size)


def test_an_upload_cut_off_by_the_client_is_a_400_and_leaves_no_temp_file(
    api_client,
    auth,
    clip,  # noqa: F811 (the fixture imported above)
    media_root,  # noqa: F811
    upload_tmp,  # noqa: F811
    caplog,
):
    body = multipart("a.mp3", clip.read_bytes() * 20, language="en")

    with caplog.at_level(logging.WARNING):
        response = api_client.generic(
            "POST",
            JOBS,
            b"",
            content_type=f"multipart/form-data; boundary={BOUNDARY}",
            CONTENT_LENGTH=str(len(body)),
            **{"wsgi.input": Disconnecting(body, len(body) // 2)},
            **auth,
        )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload_incomplete"
    assert list(upload_tmp.iterdir()) == []
    assert media_files(media_root) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
