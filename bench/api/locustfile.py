"""Locust scenarios for the API load test (started by bench/api/run.py).

BENCH_CREDENTIALS names the JSON written by bench/api/seed.py; run.py names the user class on
locust's command line. `ReadUser` (scenario `read`) is a member browsing their organisation's
jobs, transcripts, profile and reports with their own access token and X-Organisation;
`LoginUser` (scenario `login`) signs in with email and password (Argon2) and nothing else.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

_CREDS = json.loads(open(os.environ["BENCH_CREDENTIALS"]).read())  # noqa: SIM115
_next_user = itertools.count()
_lock = threading.Lock()
STATUSES = ["completed", "queued", "failed"]


def _claim_user() -> dict:
    """Each simulated user takes the next seeded account (wrapping if there are more users)."""
    with _lock:
        index = next(_next_user)
    users = _CREDS["users"]
    return users[index % len(users)]


class ReadUser(FastHttpUser):
    """A member using the web app: lists and filters jobs, opens one, reads its transcript."""

    wait_time = between(1, 5)

    def on_start(self) -> None:
        account = _claim_user()
        self.org = account["organisation"]
        self.jobs = _CREDS["jobs"][self.org]
        self.completed = _CREDS["completed_jobs"][self.org] or self.jobs
        self.headers = {
            "Authorization": f"Bearer {account['access']}",
            "X-Organisation": self.org,
            "Accept": "application/json",
        }

    @task(6)
    def jobs_list(self) -> None:
        self.client.get("/api/v1/jobs", headers=self.headers, name="GET /api/v1/jobs")

    @task(3)
    def jobs_list_filtered(self) -> None:
        status = random.choice(STATUSES)
        # Only completed jobs fill a second page of 20 in the seeded data.
        page = random.choice([1, 2]) if status == "completed" else 1
        self.client.get(
            f"/api/v1/jobs?status={status}&page_size=20&page={page}",
            headers=self.headers,
            name="GET /api/v1/jobs?status=&page=",
        )

    @task(5)
    def job_detail(self) -> None:
        job = random.choice(self.jobs)
        self.client.get(f"/api/v1/jobs/{job}", headers=self.headers, name="GET /api/v1/jobs/{id}")

    @task(3)
    def transcript(self) -> None:
        job = random.choice(self.completed)
        self.client.get(
            f"/api/v1/jobs/{job}/transcript?format=json&download=false",
            headers=self.headers,
            name="GET /api/v1/jobs/{id}/transcript?format=json",
        )

    @task(2)
    def me(self) -> None:
        self.client.get("/api/v1/me/", headers=self.headers, name="GET /api/v1/me/")

    @task(1)
    def organisations(self) -> None:
        self.client.get(
            "/api/v1/organisations/", headers=self.headers, name="GET /api/v1/organisations/"
        )

    @task(1)
    def reports(self) -> None:
        self.client.get("/api/v1/reports/", headers=self.headers, name="GET /api/v1/reports/")


class LoginUser(FastHttpUser):
    """Signs in with email and password (one Argon2 verification per request)."""

    wait_time = between(1, 5)

    def on_start(self) -> None:
        self.email = _claim_user()["email"]

    @task
    def login(self) -> None:
        self.client.post(
            "/api/v1/auth/token/",
            json={"email": self.email, "password": _CREDS["password"]},
            name="POST /api/v1/auth/token/",
        )
