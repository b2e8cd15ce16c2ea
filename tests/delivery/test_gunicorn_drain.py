"""`docker stop` on web, for real: gunicorn (lexiscore/gunicorn_conf.py, production settings).

SIGTERM to the master: new connections are refused at once (a proxy can retry them elsewhere),
a request in flight (here an audio upload whose body is still arriving) finishes with its normal
answer, and the master exits 0. A request still running after GUNICORN_GRACEFUL_TIMEOUT is cut,
and gunicorn exits anyway, in bounded time.
"""

from __future__ import annotations

import array
import contextlib
import http.client
import io
import math
import os
import socket
import time
import wave
from pathlib import Path

import pytest
from django.db import connection

from apps.accounts.models import Role
from apps.audio_jobs.models import TranscriptionJob
from tests.factories import ApiKeyFactory
from tests.support.processes import GunicornServer, RedisServer, wait_for

from .conftest import ROOT

pytestmark = [pytest.mark.slow]

BOUNDARY = "lexiscore-drain-test"
# A 2.9 MB WAV. The test sends its first 256 KiB, then holds the rest: the upload handler of
# /api/v1/jobs spools the file to FILE_UPLOAD_TEMP_DIR as soon as it starts reading it, so a file
# there shows that the request is inside a worker, authenticated and being received.
AUDIO_SECONDS = 90
FIRST_PART = 256 * 1024


def tone_wav(seconds: int, *, rate: int = 16_000) -> bytes:
    """A 400 Hz tone (a whole number of periods per second), 16-bit mono."""
    period = [int(8000 * math.sin(2 * math.pi * i / 40)) for i in range(40)]
    samples = array.array("h", period * (seconds * rate // 40))
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


def multipart_upload(audio: bytes) -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="language"\r\n\r\nen\r\n'
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="meeting.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + audio + f"\r\n--{BOUNDARY}--\r\n".encode()


class SlowUpload:
    """POST /api/v1/jobs whose body the test sends in two parts, with a pause in between."""

    def __init__(self, server: GunicornServer, api_key: str, body: bytes) -> None:
        self.body = body
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        self.connection.putrequest("POST", "/api/v1/jobs")
        self.connection.putheader("Authorization", f"Api-Key {api_key}")
        self.connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
        self.connection.putheader("Content-Length", str(len(body)))
        self.connection.endheaders(body[:FIRST_PART])

    def finish(self) -> http.client.HTTPResponse:
        for offset in range(FIRST_PART, len(self.body), FIRST_PART):
            self.connection.send(self.body[offset : offset + FIRST_PART])
        return self.connection.getresponse()

    def close(self) -> None:
        self.connection.close()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: the master and its workers."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def redis_server():
    server = RedisServer(appendonly=False).start()
    yield server
    server.kill()


@pytest.fixture
def start_gunicorn(transactional_db, redis_server):
    started: list[GunicornServer] = []

    def start(*, graceful_timeout: int) -> GunicornServer:
        server = GunicornServer(
            database_name=connection.settings_dict["NAME"],
            redis_url=redis_server.url,
            workers=2,
            graceful_timeout=graceful_timeout,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


def upload_in_flight(server: GunicornServer, api_key: str) -> SlowUpload:
    """An audio upload whose body is half sent, once a worker is spooling it to disk."""
    upload = SlowUpload(server, api_key, multipart_upload(tone_wav(AUDIO_SECONDS)))
    wait_for(lambda: any(server.upload_dir.iterdir()), timeout=30, what="the upload to start")
    return upload


@pytest.fixture
def api_key(transactional_db) -> str:
    return ApiKeyFactory(role=Role.MEMBER).raw_key


def test_sigterm_refuses_new_connections_and_lets_an_upload_in_flight_finish(
    start_gunicorn, api_key
):
    server = start_gunicorn(graceful_timeout=15)
    upload = upload_in_flight(server, api_key)

    signalled = time.monotonic()
    server.terminate()
    # Refused while the upload is still arriving: its body is not all sent yet.
    wait_for(lambda: refuses_connections(server.port), timeout=10, what="connections refused")
    response = upload.finish()
    body = response.read()
    upload.close()
    exit_code = server.process.wait(timeout=server.graceful_timeout + 30)
    stopped_after = time.monotonic() - signalled

    assert response.status == 201, body[:2000]
    job = TranscriptionJob.objects.get()
    assert job.duration_seconds == pytest.approx(AUDIO_SECONDS, abs=0.5)
    assert exit_code == 0, server.log()[-3000:]
    assert stopped_after < server.graceful_timeout, server.log()[-3000:]
    assert group_members(server.process.pid) == []


def test_a_request_still_running_after_the_graceful_timeout_is_cut_and_gunicorn_exits(
    start_gunicorn, api_key
):
    server = start_gunicorn(graceful_timeout=3)
    upload = upload_in_flight(server, api_key)

    signalled = time.monotonic()
    server.terminate()
    exit_code = server.process.wait(timeout=server.graceful_timeout + 30)
    stopped_after = time.monotonic() - signalled

    # The request was given the whole graceful timeout, then cut.
    assert server.graceful_timeout - 0.5 <= stopped_after < server.graceful_timeout + 15
    assert exit_code == 0, server.log()[-3000:]
    assert group_members(server.process.pid) == []
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        upload.finish()
    upload.close()
    assert not TranscriptionJob.objects.exists()


def _gunicorn_conf(monkeypatch, **env: str) -> dict:
    import runpy

    monkeypatch.delenv("GUNICORN_CONTROL_SOCKET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "lexiscore" / "gunicorn_conf.py"))


def test_the_control_socket_is_off_unless_a_path_is_given(monkeypatch, tmp_path):
    assert _gunicorn_conf(monkeypatch)["control_socket_disable"] is True

    conf = _gunicorn_conf(monkeypatch, GUNICORN_CONTROL_SOCKET=str(tmp_path / "g.ctl"))

    assert conf["control_socket_disable"] is False
    assert conf["control_socket"] == str(tmp_path / "g.ctl")


def test_an_empty_worker_tmp_dir_means_the_default(monkeypatch, tmp_path):
    """Empty counts as unset, as for every variable: not gunicorn's cwd-relative ''."""
    default = _gunicorn_conf(monkeypatch, GUNICORN_WORKER_TMP_DIR="")["worker_tmp_dir"]
    chosen = _gunicorn_conf(monkeypatch, GUNICORN_WORKER_TMP_DIR=str(tmp_path))["worker_tmp_dir"]

    assert default == ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    assert chosen == str(tmp_path)
