"""Deactivating an organisation (an operator's decision) goes through `organisation_deactivate`:
every request for it is refused at once, its queued and running jobs are cancelled, and the audit
trail records `organisation.deactivated`; a reactivation lets its keys and members back in."""

from __future__ import annotations

import pytest

from apps.accounts.models import Organisation, Role
from apps.accounts.services import organisation_deactivate, organisation_reactivate
from apps.audio_jobs.models import AudioUsage, JobStatus, TranscriptionJob
from apps.audit.models import AuditAction, AuditEvent
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory
from tests.factories import ApiKeyFactory, OrganisationFactory, api_key_header, bearer, member

JOBS = "/api/v1/jobs"


@pytest.fixture
def owner(db):
    return member(Role.OWNER)


def test_deactivation_cancels_queued_jobs_and_stops_running_ones(
    owner, admin_user, django_capture_on_commit_callbacks
):
    organisation = owner.organisation
    queued = JobFactory(organisation=organisation)
    assert AudioUsage.objects.filter(job_id=queued.pk).exists()
    running = JobFactory(organisation=organisation, status=JobStatus.PROCESSING)
    done = CompletedJobFactory(organisation=organisation)
    elsewhere = JobFactory()

    # The jobs are cancelled after the flag's commit.
    with django_capture_on_commit_callbacks(execute=True):
        organisation_deactivate(organisation=organisation, actor=admin_user)

    statuses = dict(TranscriptionJob.objects.values_list("pk", "status"))
    assert statuses == {
        queued.pk: JobStatus.CANCELLED,
        running.pk: JobStatus.PROCESSING,  # its worker stops it
        done.pk: JobStatus.COMPLETED,
        elsewhere.pk: JobStatus.QUEUED,
    }
    assert TranscriptionJob.objects.get(pk=running.pk).cancel_requested
    assert TranscriptionJob.objects.get(pk=queued.pk).error_code == "organisation_inactive"
    assert not AudioUsage.objects.filter(job_id=queued.pk).exists()  # never started: refunded
    assert not Organisation.objects.get(pk=organisation.pk).is_active
    event = AuditEvent.objects.get(action=AuditAction.ORGANISATION_DEACTIVATED)
    assert (event.organisation_id, event.actor_id) == (organisation.pk, admin_user.pk)
    assert event.metadata == {"jobs_cancelled": 1, "jobs_stopping": 1}


def test_the_cancelled_and_stopping_jobs_get_their_field_history_with_the_actor(
    owner, admin_user, django_capture_on_commit_callbacks
):
    """The jobs are changed by queryset updates (no signal): their django-auditlog history is
    written by the service itself, as a save would, with the request's actor."""
    from auditlog.context import set_actor
    from auditlog.models import LogEntry

    queued = JobFactory(organisation=owner.organisation)
    running = JobFactory(organisation=owner.organisation, status=JobStatus.PROCESSING)
    LogEntry.objects.all().delete()

    with set_actor(admin_user), django_capture_on_commit_callbacks(execute=True):
        organisation_deactivate(organisation=owner.organisation, actor=admin_user)

    def history(job):
        return [
            (entry.action, entry.actor_id, entry.changes_dict)
            for entry in LogEntry.objects.get_for_object(job)
        ]

    [(action, actor, changes)] = history(queued)
    assert (action, actor) == (LogEntry.Action.UPDATE, admin_user.pk)
    assert changes["status"] == ["queued", "cancelled"]
    assert changes["error_code"] == ["", "organisation_inactive"]
    assert changes["cancel_requested"] == ["False", "True"]
    assert "updated_at" not in changes  # excluded from the jobs' history, as on save
    assert history(running) == [
        (LogEntry.Action.UPDATE, admin_user.pk, {"cancel_requested": ["False", "True"]})
    ]


def test_deactivating_twice_records_it_once(owner):
    organisation_deactivate(organisation=owner.organisation, actor=None)
    organisation_deactivate(organisation=owner.organisation, actor=None)

    events = AuditEvent.objects.filter(action=AuditAction.ORGANISATION_DEACTIVATED)
    assert [e.actor_type for e in events] == ["system"]


def test_members_and_keys_are_refused_at_once_and_let_back_in_by_reactivation(api_client, owner):
    organisation = owner.organisation
    key = ApiKeyFactory(organisation=organisation)
    as_owner, as_key = bearer(owner.user), api_key_header(key)
    assert api_client.get(JOBS, **as_owner).status_code == 200  # the principal is now cached
    assert api_client.get(JOBS, **as_key).status_code == 200

    organisation_deactivate(organisation=organisation, actor=None)
    refused = (api_client.get(JOBS, **as_owner), api_client.get(JOBS, **as_key))
    organisation_reactivate(organisation=organisation, actor=None)
    back = (api_client.get(JOBS, **as_owner), api_client.get(JOBS, **as_key))

    assert [r.status_code for r in refused] == [403, 401]
    assert [r.status_code for r in back] == [200, 200]  # nothing was revoked
    assert list(
        AuditEvent.objects.filter(organisation=organisation)
        .filter(action__startswith="organisation.")
        .order_by("occurred_at")
        .values_list("action", flat=True)
    ) == [AuditAction.ORGANISATION_DEACTIVATED, AuditAction.ORGANISATION_REACTIVATED]


def test_the_admin_actions_go_through_the_services(
    admin_client, owner, django_capture_on_commit_callbacks
):
    organisation = owner.organisation
    queued = JobFactory(organisation=organisation)
    inactive = OrganisationFactory(is_active=False)

    with django_capture_on_commit_callbacks(execute=True):
        deactivated = admin_client.post(
            "/admin/accounts/organisation/",
            {"action": "deactivate_organisations", "_selected_action": [organisation.pk]},
        )
    reactivated = admin_client.post(
        "/admin/accounts/organisation/",
        {"action": "reactivate_organisations", "_selected_action": [inactive.pk]},
    )

    assert (deactivated.status_code, reactivated.status_code) == (302, 302)
    assert TranscriptionJob.objects.get(pk=queued.pk).status == JobStatus.CANCELLED
    assert not Organisation.objects.get(pk=organisation.pk).is_active
    assert Organisation.objects.get(pk=inactive.pk).is_active
    actions = dict(AuditEvent.objects.values_list("organisation_id", "action"))
    assert actions == {
        organisation.pk: AuditAction.ORGANISATION_DEACTIVATED,
        inactive.pk: AuditAction.ORGANISATION_REACTIVATED,
    }
    assert AuditEvent.objects.get(organisation=organisation).actor.is_superuser


def test_the_change_form_shows_active_read_only_and_ignores_it(admin_client, owner):
    organisation = owner.organisation
    url = f"/admin/accounts/organisation/{organisation.pk}/change/"

    form = admin_client.get(url)
    # "Active" unticked, as a browser would send it if it were a field.
    posted = admin_client.post(url, {"name": "Renamed", "plan": organisation.plan})

    assert 'name="is_active"' not in form.content.decode()
    assert posted.status_code == 302, posted.content.decode()[:2000]
    organisation.refresh_from_db()
    assert (organisation.name, organisation.is_active) == ("Renamed", True)
    assert not AuditEvent.objects.filter(action=AuditAction.ORGANISATION_DEACTIVATED).exists()


@pytest.mark.django_db(transaction=True)
def test_work_that_meets_a_deactivation_is_refused_or_cancelled_and_nothing_deadlocks(
    monkeypatch,
):
    """Between the committed flag and the cancelling of the jobs: a job creation is refused and
    a worker's claim cancels its job; then the queue is cancelled in batches, the feed told."""
    import threading

    from django.db import connections

    from apps.audio_jobs import processing
    from apps.audio_jobs import services as job_services
    from apps.audio_jobs.services import OrganisationInactive, _create_job
    from apps.feed.models import FeedEvent

    organisation = OrganisationFactory(plan="enterprise")
    queue = [JobFactory(organisation=organisation) for _ in range(7)]
    cancel_all = job_services.jobs_cancel_for_organisation
    seen: dict = {}

    def in_between(**kwargs):
        def other_work() -> None:
            try:
                try:
                    _create_job(
                        job_id=None,
                        organisation=organisation,
                        user=None,
                        options=job_services.JobOptions(),
                    )
                except OrganisationInactive as exc:
                    seen["create"] = exc.code
                seen["claim"] = processing._claim(str(queue[0].pk), 0)[0]
            finally:
                connections.close_all()

        worker = threading.Thread(target=other_work)
        worker.start()
        worker.join(20)
        assert not worker.is_alive()
        return cancel_all(**{**kwargs, "batch": 3})

    monkeypatch.setattr(job_services, "jobs_cancel_for_organisation", in_between)

    organisation_deactivate(organisation=organisation, actor=None)

    assert seen == {"create": "organisation_inactive", "claim": "cancelled"}
    statuses = set(
        TranscriptionJob.objects.filter(organisation=organisation).values_list("status", flat=True)
    )
    assert statuses == {JobStatus.CANCELLED}
    announced = FeedEvent.objects.filter(organisation=organisation, type="job.cancelled")
    assert announced.count() == 7


def test_deactivating_again_finishes_cancelling_what_an_interrupted_run_left(
    owner, django_capture_on_commit_callbacks
):
    """Step 2 was cut short (a lock wait past the statement timeout, a killed process): the
    organisation is off, a job still runs without a stop request. Deactivating again asks it."""
    organisation = owner.organisation
    running = JobFactory(organisation=organisation, status=JobStatus.PROCESSING)
    Organisation.objects.filter(pk=organisation.pk).update(is_active=False)

    with django_capture_on_commit_callbacks(execute=True):
        organisation_deactivate(organisation=organisation, actor=None)

    assert TranscriptionJob.objects.get(pk=running.pk).cancel_requested
    assert not AuditEvent.objects.filter(action=AuditAction.ORGANISATION_DEACTIVATED).exists()


@pytest.mark.django_db(transaction=True)
def test_a_job_finishing_after_its_organisation_was_deactivated_is_cancelled_not_completed():
    from apps.audio_jobs import processing
    from workers.engines.base import TranscriptionResult

    organisation = OrganisationFactory()
    job = JobFactory(organisation=organisation, status=JobStatus.PROCESSING)
    Organisation.objects.filter(pk=organisation.pk).update(is_active=False)
    result = TranscriptionResult(
        text="x", language="en", language_probability=1.0, duration=1.0, segments=[]
    )

    outcome = processing._complete(job, result, processing_seconds=0.1)

    assert outcome == "cancelled"
    assert TranscriptionJob.objects.get(pk=job.pk).status == JobStatus.CANCELLED
