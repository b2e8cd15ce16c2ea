"""Helpers of the reports and webhooks tests: a finished job, a real SMTP server, a receiver."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.utils import timezone

from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob


def subscribed_owner(email: str = "creator@example.com"):
    """An owner whose organisation has a webhook endpoint for job.completed and job.failed."""
    from apps.accounts.models import Role
    from apps.webhooks.models import WebhookEndpoint
    from tests.factories import member

    owner = member(Role.OWNER, email=email)
    WebhookEndpoint.objects.create(
        organisation=owner.organisation,
        url="https://hooks.customer.test/x",
        event_types=["job.completed", "job.failed"],
        secret="whsec_AAAA",
    )
    return owner


def processing_job(owner, **fields) -> TranscriptionJob:
    """A job of `owner`'s organisation that a worker is transcribing."""
    return TranscriptionJob.objects.create(
        organisation=owner.organisation,
        created_by=owner.user,
        status=JobStatus.PROCESSING,
        started_at=timezone.now(),
        original_filename="meeting.wav",
        duration_seconds=1.0,
        **fields,
    )


def completed_job(
    organisation,
    user=None,
    *,
    words: list[tuple[str, float, float, float]] | None = None,
    filename: str = "meeting.wav",
    duration: float = 20.0,
) -> TranscriptionJob:
    """A completed job whose transcript has one segment per 10 words of `words`."""
    words = words or [
        (" Hello", 0.0, 0.4, 0.99),
        (" world,", 0.5, 0.9, 0.98),
        (" um", 1.0, 1.2, 0.95),
        (" this", 4.0, 4.2, 0.97),
        (" is", 4.3, 4.4, 0.99),
        (" a", 4.5, 4.6, 0.99),
        (" recorded", 4.7, 5.2, 0.3),
        (" meeting", 5.3, 5.8, 0.2),
        (" about", 5.9, 6.2, 0.9),
        (" budgets.", 6.3, 7.0, 0.9),
    ]
    job = TranscriptionJob.objects.create(
        organisation=organisation,
        created_by=user,
        status=JobStatus.COMPLETED,
        original_filename=filename,
        duration_seconds=duration,
        language="en",
        model_used="tiny.en",
        engine="faster-whisper",
        processing_seconds=3.5,
        finished_at=timezone.now(),
    )
    segments = []
    for i in range(0, len(words), 10):
        chunk = words[i : i + 10]
        segments.append(
            {
                "id": i // 10,
                "start": chunk[0][1],
                "end": chunk[-1][2],
                "text": "".join(w[0] for w in chunk),
                "words": [
                    {"word": w, "start": s, "end": e, "probability": p} for w, s, e, p in chunk
                ],
            }
        )
    Transcript.objects.create(
        job=job,
        text="".join(w[0] for w in words).strip(),
        language="en",
        language_probability=0.99,
        duration=duration,
        segments=segments,
        word_count=len(words),
    )
    return job


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on loopback answering the queued (status, headers) in order; HTTPS
    when given a server-side `tls` context."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    delay: float = 0.0
    tls: ssl.SSLContext | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                if receiver.delay:
                    threading.Event().wait(receiver.delay)
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        if self.tls is not None:
            # Accepted connections complete the TLS handshake first; a client that refuses the
            # certificate never gets to send its request.
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hooks"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
