"""Locust scenarios for the API load test (started by bench/api/run.py).

BENCH_CREDENTIALS names the JSON written by bench/api/seed.py; run.py names the user class on
locust's command line:

- `ReadUser` (scenario `read`): a member browsing their organisation's jobs, transcripts, profile
  and reports with a pre-issued access token and X-Organisation.
- `SessionUser` (scenario `session`): the same member's whole visits: signs in with email and
  password (Argon2), browses with the read mix, rotates the refresh token now and then, and
  signs out and back in for a new visit, so sign-ins and refreshes happen all through the
  measured window, beside the reads.
- `LoginUser` (scenario `login`): signs in with email and password and nothing else (the cost
  of Argon2 at full load).

Every simulated user sends its own client address in X-Forwarded-For (run.py trusts loopback as
the proxy), as users behind a load balancer do: per-IP limits apply per user, not to locust.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading

from locust import between
from locust.contrib.fasthttp import FastHttpUser

_CREDS = json.loads(open(os.environ["BENCH_CREDENTIALS"]).read())  # noqa: SIM115
_next_user = itertools.count()
_lock = threading.Lock()
STATUSES = ["completed", "queued", "failed"]


class MemberUser(FastHttpUser):
    """One seeded account per simulated user (wrapping if there are more users than accounts)."""

    abstract = True
    wait_time = between(1, 5)

    def on_start(self) -> None:
        with _lock:
            index = next(_next_user)
        account = _CREDS["users"][index % len(_CREDS["users"])]
        self.email = account["email"]
        self.org = account["organisation"]
        self.jobs = _CREDS["jobs"][self.org]
        self.completed = _CREDS["completed_jobs"][self.org] or self.jobs
        self.client_ip = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
        self.refresh = ""
        self.use_access(account.get("access", ""))

    def use_access(self, access: str) -> None:
        self.headers = {
            "Authorization": f"Bearer {access}",
            "X-Organisation": self.org,
            "Accept": "application/json",
            "X-Forwarded-For": self.client_ip,
        }

    def sign_in(self) -> None:
        self.take_pair("/api/v1/auth/token/", {"email": self.email, "password": _CREDS["password"]})

    def take_pair(self, path: str, body: dict) -> None:
        """POST for a token pair (sign-in or refresh rotation) and use it from now on."""
        with self.client.post(
            path,
            json=body,
            headers={"X-Forwarded-For": self.client_ip},
            name=f"POST {path}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{path} answered {response.status_code}")
                return
            pair = response.json()
            self.refresh = pair["refresh"]
            self.use_access(pair["access"])


# ---- the read mix (weights: what a member opens most) ------------------------------------------


def jobs_list(user: MemberUser) -> None:
    user.client.get("/api/v1/jobs", headers=user.headers, name="GET /api/v1/jobs")


def jobs_list_filtered(user: MemberUser) -> None:
    status = random.choice(STATUSES)
    # Only completed jobs fill a second page of 20 in the seeded data.
    page = random.choice([1, 2]) if status == "completed" else 1
    user.client.get(
        f"/api/v1/jobs?status={status}&page_size=20&page={page}",
        headers=user.headers,
        name="GET /api/v1/jobs?status=&page=",
    )


def job_detail(user: MemberUser) -> None:
    job = random.choice(user.jobs)
    user.client.get(f"/api/v1/jobs/{job}", headers=user.headers, name="GET /api/v1/jobs/{id}")


def transcript(user: MemberUser) -> None:
    job = random.choice(user.completed)
    user.client.get(
        f"/api/v1/jobs/{job}/transcript?format=json&download=false",
        headers=user.headers,
        name="GET /api/v1/jobs/{id}/transcript?format=json",
    )


def me(user: MemberUser) -> None:
    user.client.get("/api/v1/me/", headers=user.headers, name="GET /api/v1/me/")


def organisations(user: MemberUser) -> None:
    user.client.get(
        "/api/v1/organisations/", headers=user.headers, name="GET /api/v1/organisations/"
    )


def reports(user: MemberUser) -> None:
    user.client.get("/api/v1/reports/", headers=user.headers, name="GET /api/v1/reports/")


READ_MIX = {
    jobs_list: 6,
    jobs_list_filtered: 3,
    job_detail: 5,
    transcript: 3,
    me: 2,
    organisations: 1,
    reports: 1,
}


# ---- session events ----------------------------------------------------------------------------


def rotate_refresh(user: SessionUser) -> None:
    user.take_pair("/api/v1/auth/token/refresh/", {"refresh": user.refresh})


def new_visit(user: SessionUser) -> None:
    user.client.post(
        "/api/v1/auth/logout/",
        json={"refresh": user.refresh},
        headers={"X-Forwarded-For": user.client_ip},
        name="POST /api/v1/auth/logout/",
    )
    user.sign_in()


class ReadUser(MemberUser):
    """A member using the web app with an access token issued beforehand."""

    tasks = READ_MIX


class SessionUser(MemberUser):
    """Whole visits: sign in, ~80 reads (4-5 minutes at 1-5 s think time), one refresh-token
    rotation on average per visit, sign out, sign in again."""

    tasks = {**{task: 4 * weight for task, weight in READ_MIX.items()}, rotate_refresh: 1}
    tasks[new_visit] = 1

    def on_start(self) -> None:
        super().on_start()
        self.sign_in()


class LoginUser(MemberUser):
    """Signs in with email and password (one Argon2 verification per request)."""

    tasks = [MemberUser.sign_in]
