"""Seed a scratch database for the API load test and write the credentials the load test uses.

Run as a Django script against the scratch database (bench/api/run.py does this)::

    DJANGO_SETTINGS_MODULE=... DATABASE_URL=... python bench/api/seed.py --out creds.json

Creates ORGS organisations with USERS_PER_ORG members each and JOBS_PER_ORG jobs per
organisation (mostly completed, each completed job with a Transcript of 10-60 segments with word
timings), a few reports per organisation, and one access token per user issued with the
accounts token service (no login, so seeding does not pay Argon2 per user). Every user shares
one password (hashed once), so any of them can also sign in for the login scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lexiscore.settings.production")

import django  # noqa: E402

django.setup()

from django.contrib.auth.hashers import make_password  # noqa: E402
from django.db import transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from apps.accounts.models import Membership, Organisation, Role, User  # noqa: E402
from apps.accounts.tokens import token_pair_issue  # noqa: E402
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob  # noqa: E402
from apps.reports.models import Report, ReportFormat, ReportKind, ReportStatus  # noqa: E402

PASSWORD = "bench-Passphrase-not-secret-7319"
WORDS = [
    "the",
    "quarterly",
    "numbers",
    "look",
    "strong",
    "and",
    "the",
    "team",
    "agreed",
    "to",
    "move",
    "the",
    "launch",
    "forward",
    "by",
    "two",
    "weeks",
    "so",
    "that",
    "support",
    "can",
    "prepare",
    "the",
    "documentation",
    "before",
    "customers",
    "start",
    "asking",
    "about",
    "pricing",
    "integration",
    "security",
    "and",
    "the",
    "new",
    "reporting",
    "features",
    "we",
    "promised",
    "last",
    "spring",
]
ROLES = [Role.OWNER, Role.ADMIN] + [Role.MEMBER] * 14 + [Role.VIEWER] * 4
STATUSES = (
    [JobStatus.COMPLETED] * 32
    + [JobStatus.QUEUED] * 3
    + [JobStatus.PROCESSING] * 2
    + [JobStatus.FAILED] * 2
    + [JobStatus.CANCELLED]
)


def transcript_for(rng: random.Random, segments_n: int) -> tuple[str, list[dict], float, int]:
    t = 0.0
    segments = []
    texts = []
    words_total = 0
    for i in range(segments_n):
        words = []
        start = t
        for _ in range(rng.randint(8, 22)):
            w_start = t
            t += rng.uniform(0.18, 0.55)
            words.append(
                {
                    "start": round(w_start, 2),
                    "end": round(t, 2),
                    "word": " " + rng.choice(WORDS),
                    "probability": round(rng.uniform(0.55, 0.999), 3),
                }
            )
            t += rng.uniform(0.0, 0.12)
        text = "".join(w["word"] for w in words)
        texts.append(text.strip())
        words_total += len(words)
        segments.append(
            {
                "id": i,
                "seek": int(start * 100),
                "start": round(start, 2),
                "end": round(t, 2),
                "text": text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": round(rng.uniform(-0.6, -0.1), 3),
                "compression_ratio": round(rng.uniform(1.2, 2.0), 3),
                "no_speech_prob": round(rng.uniform(0.0, 0.1), 3),
                "words": words,
            }
        )
        t += rng.uniform(0.2, 1.0)
    return " ".join(texts), segments, round(t, 2), words_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--users-per-org", type=int, default=20)
    parser.add_argument("--jobs-per-org", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", required=True, help="credentials JSON to write")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    started = time.monotonic()
    password_hash = make_password(PASSWORD)  # one Argon2 hash, shared by every bench user
    now = timezone.now()
    users_out: list[dict] = []
    n_jobs = n_transcripts = 0

    with transaction.atomic():
        orgs = Organisation.objects.bulk_create(
            [
                Organisation(name=f"Bench organisation {i:03d}", plan="team")
                for i in range(args.orgs)
            ]
        )
        users = User.objects.bulk_create(
            [
                User(
                    email=f"bench-{o:03d}-{u:03d}@bench.example",
                    full_name=f"Bench User {o}-{u}",
                    password=password_hash,
                    email_verified_at=now,
                )
                for o in range(args.orgs)
                for u in range(args.users_per_org)
            ]
        )
        memberships = []
        for o, org in enumerate(orgs):
            for u in range(args.users_per_org):
                user = users[o * args.users_per_org + u]
                memberships.append(
                    Membership(user=user, organisation=org, role=ROLES[u % len(ROLES)])
                )
        Membership.objects.bulk_create(memberships)

        for o, org in enumerate(orgs):
            org_users = users[o * args.users_per_org : (o + 1) * args.users_per_org]
            jobs, transcripts = [], []
            for j in range(args.jobs_per_org):
                status = rng.choice(STATUSES)
                created = now - timedelta(days=rng.uniform(0, 90))
                job = TranscriptionJob(
                    id=uuid.uuid4(),
                    organisation=org,
                    created_by=rng.choice(org_users),
                    status=status,
                    language="en",
                    model_profile="tiny.en",
                    original_filename=f"meeting-{o:03d}-{j:03d}.mp3",
                    audio_key=f"audio/{org.id}/{uuid.uuid4()}.mp3",
                    size_bytes=rng.randint(200_000, 30_000_000),
                    container="mp3",
                    codec="mp3",
                    audio_validated=True,
                    queued_at=created,
                    progress=100.0 if status == JobStatus.COMPLETED else 0.0,
                )
                if status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
                    job.started_at = created + timedelta(seconds=rng.uniform(1, 30))
                    job.finished_at = job.started_at + timedelta(seconds=rng.uniform(5, 120))
                    job.processing_seconds = (job.finished_at - job.started_at).total_seconds()
                if status == JobStatus.FAILED:
                    job.error_code, job.error_message = "audio_decode", "Could not decode."
                if status == JobStatus.COMPLETED:
                    text, segments, duration, words = transcript_for(rng, rng.randint(10, 60))
                    job.duration_seconds = duration
                    job.engine, job.model_used = "faster-whisper", "tiny.en"
                    job.model_sha256 = (
                        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
                    )
                    job.engine_settings = {"beam_size": 5, "compute_type": "int8"}
                    transcripts.append(
                        Transcript(
                            job=job,
                            text=text,
                            language="en",
                            language_probability=1.0,
                            duration=duration,
                            segments=segments,
                            word_count=words,
                        )
                    )
                else:
                    job.duration_seconds = round(rng.uniform(10, 900), 1)
                jobs.append(job)
            TranscriptionJob.objects.bulk_create(jobs)
            # created_at is auto_now_add: spread it over the last 90 days like real history.
            for job in jobs:
                job.created_at = job.queued_at
            TranscriptionJob.objects.bulk_update(jobs, ["created_at"])
            Transcript.objects.bulk_create(transcripts)
            completed = [job for job in jobs if job.status == JobStatus.COMPLETED]
            Report.objects.bulk_create(
                [
                    Report(
                        organisation=org,
                        created_by=org_users[0],
                        kind=ReportKind.TRANSCRIPT,
                        format=ReportFormat.PDF,
                        job=completed[k % len(completed)] if completed else None,
                        status=ReportStatus.READY,
                        filename=f"report-{k}.pdf",
                        size_bytes=60_000,
                        finished_at=now,
                    )
                    for k in range(5)
                ]
            )
            n_jobs += len(jobs)
            n_transcripts += len(transcripts)

    for o, org in enumerate(orgs):
        for u in range(args.users_per_org):
            user = users[o * args.users_per_org + u]
            pair = token_pair_issue(user=user, organisation=None)
            users_out.append(
                {
                    "email": user.email,
                    "organisation": str(org.id),
                    "access": pair.access,
                }
            )
    job_ids = {
        str(org_id): [str(pk) for pk in pks]
        for org_id, pks in _job_ids_by_org([org.id for org in orgs]).items()
    }
    completed_ids = {
        str(org_id): [str(pk) for pk in pks]
        for org_id, pks in _job_ids_by_org([org.id for org in orgs], completed=True).items()
    }
    Path(args.out).write_text(
        json.dumps(
            {
                "password": PASSWORD,
                "users": users_out,
                "jobs": job_ids,
                "completed_jobs": completed_ids,
            }
        )
    )
    print(
        f"seeded {len(orgs)} organisations, {len(users)} users, {n_jobs} jobs, "
        f"{n_transcripts} transcripts, {5 * len(orgs)} reports, {len(users_out)} tokens "
        f"in {time.monotonic() - started:.1f} s"
    )


def _job_ids_by_org(org_ids: list, completed: bool = False) -> dict:
    queryset = TranscriptionJob.objects.filter(organisation_id__in=org_ids)
    if completed:
        queryset = queryset.filter(status=JobStatus.COMPLETED)
    out: dict = {org_id: [] for org_id in org_ids}
    for org_id, pk in queryset.values_list("organisation_id", "pk"):
        out[org_id].append(pk)
    return out


if __name__ == "__main__":
    main()
