"""Deleting an organisation (the admin) while its workers finish jobs and reports: no deadlock,
and no stored file left behind."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.files.storage import default_storage
from django.db import connections

from apps.accounts.models import Organisation
from apps.audio_jobs import processing, services
from apps.audio_jobs.models import JobStatus, TranscriptionJob
from apps.core.models import PendingDeletion
from apps.reports import services as report_services
from apps.reports.models import Report
from apps.webhooks.models import WebhookEndpoint
from tests.audio_jobs.factories import JobFactory
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _in_thread(target, errors: dict, name: str) -> threading.Thread:
    def run():
        try:
            target()
        except BaseException as exc:
            errors[name] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def race_delete_against(worker, organisation, paused: threading.Event, go: threading.Event):
    """Run `worker` until it pauses holding its locks (`paused`), start deleting `organisation`,
    let the worker go on, and return what either side raised (a deadlock aborts one of them)."""
    errors: dict[str, BaseException] = {}
    working = _in_thread(worker, errors, "worker")
    assert paused.wait(10)
    admin = _in_thread(
        lambda: services.organisation_delete(organisation=organisation), errors, "admin"
    )
    time.sleep(1.0)  # the delete now waits for the job's row
    go.set()
    working.join(30)
    admin.join(30)
    return errors


def test_no_deadlock_with_a_worker_finishing_one_of_its_jobs(monkeypatch):
    """The worker holds the job, then inserts a webhook delivery (a key-share lock on the
    organisation); the delete must not hold the organisation while it waits for the job."""
    job = JobFactory(status=JobStatus.PROCESSING)
    organisation = job.organisation
    WebhookEndpoint.objects.create(
        organisation=organisation,
        url="https://hooks.customer.test/x",
        event_types=["job.failed"],
        secret="whsec_AAAA",
    )
    job_locked, go = threading.Event(), threading.Event()
    original = processing._locked_active

    def locked_then_pause(j):
        locked = original(j)
        job_locked.set()
        go.wait(10)
        return locked

    monkeypatch.setattr(processing, "_locked_active", locked_then_pause)

    errors = race_delete_against(
        lambda: processing._fail(job, "engine_error", "boom"), organisation, job_locked, go
    )

    assert not errors, errors
    assert not Organisation.objects.filter(pk=organisation.pk).exists()
    assert not TranscriptionJob.objects.filter(pk=job.pk).exists()


def test_a_report_finishing_during_the_delete_leaves_no_file(monkeypatch):
    organisation = OrganisationFactory()
    report = Report.objects.create(
        organisation=organisation, kind="usage", format="csv", status="running", attempts=1
    )
    monkeypatch.setattr(report_services, "_render", lambda r: (b"a,b\n", "usage.csv"))
    listed, go = threading.Event(), threading.Event()
    original_delete = Organisation.delete

    def paused_delete(self, *args, **kwargs):
        listed.set()  # every child is locked and its files listed
        go.wait(10)
        return original_delete(self, *args, **kwargs)

    monkeypatch.setattr(Organisation, "delete", paused_delete)
    errors: dict[str, BaseException] = {}
    admin = _in_thread(
        lambda: services.organisation_delete(organisation=organisation), errors, "admin"
    )
    assert listed.wait(10)
    threading.Timer(1.0, go.set).start()
    # The worker finishes now: it waits for the report's row, then finds it deleted.
    built = report_services._build(Report.objects.get(pk=report.pk))
    admin.join(30)

    assert not errors, errors
    assert built is None
    assert not Report.objects.filter(pk=report.pk).exists()
    leftovers = [
        key
        for key in PendingDeletion.objects.values_list("key", flat=True)
        if default_storage.exists(key)
    ]
    assert leftovers == []
    folder = f"reports/{organisation.pk}/{report.pk}"
    assert not default_storage.exists(folder) or default_storage.listdir(folder)[1] == []


def test_no_deadlock_with_a_worker_validating_an_upload_against_the_quota(monkeypatch):
    """The worker locks the job, then the organisation (to read its usage): the delete's order."""
    from types import SimpleNamespace

    job = JobFactory(status=JobStatus.PROCESSING, audio_validated=False, duration_seconds=None)
    organisation = job.organisation
    probe = SimpleNamespace(format_name="wav", codec="pcm_s16le", duration_seconds=3.0)
    monkeypatch.setattr(services, "probe_audio", lambda path: probe)
    organisation_locked, go = threading.Event(), threading.Event()

    def quota_pause(*, organisation, duration_seconds=0.0):
        organisation_locked.set()  # the worker holds the job's and the organisation's rows
        go.wait(10)

    monkeypatch.setattr(services, "quota_check", quota_pause)

    errors = race_delete_against(
        lambda: processing._validate(job, "/not-read"), organisation, organisation_locked, go
    )

    assert not errors, errors
    assert not Organisation.objects.filter(pk=organisation.pk).exists()
