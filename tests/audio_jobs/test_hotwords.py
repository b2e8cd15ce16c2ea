"""Hotwords in a job's life: asked for on upload, merged with the organisation's, stored on the
job, given to the real tiny.en model by the worker (espeak-ng speech of names it mishears), and
managed by organisation admins. The engines' handling is in tests/engines/test_hotwords.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command

from apps.accounts.models import Role
from apps.audio_jobs import processing
from apps.audio_jobs.models import Transcript, TranscriptionJob
from apps.audit.models import AuditAction, AuditEvent
from tests.audio_jobs.factories import FixedEngine, engine, timed_result
from tests.factories import bearer, member
from workers.engines.base import MAX_HOTWORDS_CHARS, merge_hotwords

JOBS = "/api/v1/jobs"
SENTENCE = (
    "Tomorrow I will meet Siobhan Ngata at the Zorvex conference in Llanelli, "
    "and we will discuss the Qarlon roadmap."
)
NAMES = ["Siobhan Ngata", "Zorvex", "Llanelli", "Qarlon"]


def upload(client, headers, path: Path, **fields):
    with path.open("rb") as handle:
        return client.post(JOBS, {"file": handle, "language": "en", **fields}, **headers)


@pytest.fixture(scope="module")
def names_clip(speech) -> Path:
    return speech.say(SENTENCE, fmt="mp3")


@pytest.fixture
def owner(db):
    return member(Role.OWNER)


@pytest.fixture
def headers(owner):
    return bearer(owner.user, owner.organisation)


def set_organisation_hotwords(client, owner, headers, value: str):
    return client.patch(
        f"/api/v1/organisations/{owner.organisation.pk}/",
        {"hotwords": value},
        content_type="application/json",
        **headers,
    )


@pytest.mark.slow
@pytest.mark.django_db
def test_the_worker_gives_the_jobs_and_organisations_hotwords_to_the_model(
    client, owner, headers, names_clip, tiny_engine
):
    assert set_organisation_hotwords(client, owner, headers, "Llanelli, Qarlon").status_code == 200
    response = upload(client, headers, names_clip, hotwords="Siobhan Ngata, Zorvex")
    plain = upload(client, bearer(*_other_organisation()), names_clip)  # no hotwords anywhere

    assert response.status_code == plain.status_code == 201, response.content
    assert response.json()["hotwords"] == "Siobhan Ngata, Zorvex, Llanelli, Qarlon"
    texts = []
    for answer in (response, plain):
        job = TranscriptionJob.objects.get(pk=answer.json()["id"])
        with engine(tiny_engine):
            assert processing._run(job) == "completed"
        texts.append(Transcript.objects.get(job=job).text)

    hinted, unhinted = texts
    assert sum(name in hinted for name in NAMES) >= 3, hinted
    assert sum(name in unhinted for name in NAMES) <= 1, unhinted


def _other_organisation():
    other = member(Role.OWNER, email="other-owner@example.com")
    return other.user, other.organisation


@pytest.mark.django_db
def test_the_job_stores_what_the_worker_passes_on(client, headers, names_clip):
    job = TranscriptionJob.objects.get(
        pk=upload(client, headers, names_clip, hotwords="  Siobhan   Ngata ,, Zorvex ").json()["id"]
    )
    fixed = FixedEngine(timed_result("Tomorrow I will meet Siobhan Ngata."))

    with engine(fixed):
        assert processing._run(job) == "completed"

    job.refresh_from_db()
    assert job.hotwords == "Siobhan Ngata, Zorvex"
    assert fixed.options.hotwords == "Siobhan Ngata, Zorvex"


@pytest.mark.django_db
def test_a_job_without_hotwords_gives_the_model_none(client, headers, names_clip):
    job = TranscriptionJob.objects.get(pk=upload(client, headers, names_clip).json()["id"])
    fixed = FixedEngine(timed_result("Tomorrow."))

    with engine(fixed):
        assert processing._run(job) == "completed"

    assert job.hotwords == "" and fixed.options.hotwords is None


@pytest.mark.django_db
def test_hotwords_over_the_limit_are_refused_with_the_field_named(client, headers, names_clip):
    response = upload(client, headers, names_clip, hotwords="x" * (MAX_HOTWORDS_CHARS + 1))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "hotwords" in response.json()["error"]["details"]
    assert not TranscriptionJob.objects.exists()


def test_merging_keeps_each_term_once_and_the_jobs_first_within_the_limit():
    assert merge_hotwords("Qarlon, Siobhan  Ngata", "qarlon, LexisCore,") == (
        "Qarlon, Siobhan Ngata, LexisCore"
    )
    assert merge_hotwords("", "") == ""
    long_job = ", ".join(f"term{n:03d}" for n in range(54))  # 484 characters
    merged = merge_hotwords(long_job, "Zorvex, Qarlon, Llanelli")
    assert merged.startswith(long_job) and len(merged) <= MAX_HOTWORDS_CHARS
    assert merged.endswith("Zorvex, Qarlon")  # what no longer fits is the organisation's last


@pytest.mark.django_db
def test_admins_set_the_organisations_hotwords_and_the_change_is_audited(client, owner, headers):
    admin = member(Role.ADMIN, organisation=owner.organisation, email="adm@example.com")
    plain = member(Role.MEMBER, organisation=owner.organisation, email="mem@example.com")

    answer = set_organisation_hotwords(
        client, admin, bearer(admin.user, owner.organisation), " Qarlon ,Zorvex, qarlon"
    )
    refused = set_organisation_hotwords(
        client, plain, bearer(plain.user, owner.organisation), "Nope"
    )
    too_long = set_organisation_hotwords(client, owner, headers, "x" * (MAX_HOTWORDS_CHARS + 1))

    assert answer.status_code == 200
    assert answer.json()["hotwords"] == "Qarlon, Zorvex"
    assert refused.status_code == 403 and too_long.status_code == 400
    owner.organisation.refresh_from_db()
    assert owner.organisation.hotwords == "Qarlon, Zorvex"
    event = AuditEvent.objects.get(action=AuditAction.ORGANISATION_UPDATED)
    assert event.actor == admin.user and event.metadata == {"hotwords": ["", "Qarlon, Zorvex"]}


@pytest.mark.slow
@pytest.mark.django_db
def test_manage_py_transcribe_takes_hotwords(names_clip, tiny_engine):
    from unittest import mock

    out = io.StringIO()
    command = "apps.audio_jobs.management.commands.transcribe.engine_from_settings"
    with mock.patch(command, return_value=tiny_engine):
        call_command(
            "transcribe",
            str(names_clip),
            "--language",
            "en",
            "--hotwords",
            ", ".join(NAMES),
            stdout=out,
            stderr=io.StringIO(),
        )

    assert sum(name in out.getvalue() for name in NAMES) >= 3, out.getvalue()


@pytest.mark.django_db
def test_the_admin_form_takes_hotwords_as_the_api_does(owner):
    from apps.accounts.admin import OrganisationForm

    organisation = owner.organisation
    base = {
        "name": organisation.name,
        "plan": organisation.plan,
        "redact_pii": "[]",
        "share_links_enabled": "on",
    }

    tidy = OrganisationForm(
        data={**base, "hotwords": " Qarlon ,, qarlon, Zorvex "}, instance=organisation
    )
    too_long = OrganisationForm(
        data={**base, "hotwords": "x" * (MAX_HOTWORDS_CHARS + 1)}, instance=organisation
    )

    assert tidy.is_valid(), tidy.errors
    assert tidy.cleaned_data["hotwords"] == "Qarlon, Zorvex"
    assert not too_long.is_valid() and "hotwords" in too_long.errors
