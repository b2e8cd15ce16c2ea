"""Services of the audio jobs app: quota, time limits, dispatch after commit, the sweeper, the
poison-message cap, the job lease and cleanup of stored audio. The broker is mocked at
`transcribe_job.apply_async` (the publish boundary)."""

from __future__ import annotations

import ast
import uuid
from datetime import timedelta
from pathlib import Path
from unittest import mock

import psycopg
import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from apps.audio_jobs import leases, processing, selectors, services
from apps.audio_jobs.leases import JobLease
from apps.audio_jobs.models import AudioUsage, JobStatus, TranscriptionJob
from apps.core.models import DeadLetter
from tests.audio_jobs.conftest import create_from_clip, media_files
from tests.audio_jobs.factories import JobFactory
from tests.factories import OrganisationFactory
from workers.base import TransientError

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def publish():
    with mock.patch("workers.transcription.transcribe_job.apply_async") as apply_async:
        yield apply_async


def published_ids(publish) -> list[str]:
    return [c.kwargs["args"][0] for c in publish.call_args_list]


def age(job: TranscriptionJob, **fields) -> None:
    """Set timestamps (auto_now_add ignores them on create), the usage ledger's month too."""
    TranscriptionJob.objects.filter(pk=job.pk).update(**fields)
    if "created_at" in fields:
        AudioUsage.objects.filter(job_id=job.pk).update(job_created_at=fields["created_at"])


# ---- quota -------------------------------------------------------------------------------------
@pytest.fixture
def quota(settings):
    settings.PLAN_AUDIO_MINUTES_PER_MONTH = {"free": 10, "team": 100, "enterprise": None}


def test_quota_allows_work_within_the_remaining_minutes(quota):
    organisation = OrganisationFactory(plan="free")
    JobFactory(organisation=organisation, status=JobStatus.COMPLETED, duration_seconds=540.0)

    services.quota_check(organisation=organisation, duration_seconds=60.0)  # exactly the rest


def test_quota_refuses_a_file_longer_than_the_rest_with_the_figures(quota):
    organisation = OrganisationFactory(plan="free")
    JobFactory(organisation=organisation, status=JobStatus.PROCESSING, duration_seconds=540.0)

    with pytest.raises(services.QuotaExceeded) as refused:
        services.quota_check(organisation=organisation, duration_seconds=61.0)

    assert refused.value.status_code == 402
    assert refused.value.code == "quota_exceeded"
    assert refused.value.details["limit_minutes"] == 10
    assert refused.value.details["used_minutes"] == 9.0
    assert refused.value.details["requested_minutes"] == 1.02


def test_quota_refuses_any_work_once_used_up(quota):
    organisation = OrganisationFactory(plan="free")
    JobFactory(organisation=organisation, duration_seconds=600.0)

    with pytest.raises(services.QuotaExceeded, match="used its 10 audio minutes for this month"):
        services.quota_check(organisation=organisation)


def test_quota_counts_this_month_of_this_organisation_only(quota):
    organisation = OrganisationFactory(plan="free")
    last_month = JobFactory(organisation=organisation, duration_seconds=600.0)
    age(last_month, created_at=selectors.month_start() - timedelta(seconds=1))
    JobFactory(organisation=OrganisationFactory(plan="free"), duration_seconds=600.0)
    # Failed before work started: not counted. Failed after starting: counted.
    JobFactory(organisation=organisation, status=JobStatus.FAILED, duration_seconds=600.0)
    JobFactory(
        organisation=organisation,
        status=JobStatus.FAILED,
        started_at=timezone.now(),
        duration_seconds=300.0,
    )

    assert (
        selectors.audio_seconds_used(organisation=organisation, since=selectors.month_start())
        == 300.0
    )
    services.quota_check(organisation=organisation, duration_seconds=300.0)


def test_quota_follows_the_plan_and_unlimited_plans_pass(quota):
    team = OrganisationFactory(plan="team")
    enterprise = OrganisationFactory(plan="enterprise")
    JobFactory(organisation=enterprise, duration_seconds=1_000_000.0)

    services.quota_check(organisation=team, duration_seconds=100 * 60)
    services.quota_check(organisation=enterprise, duration_seconds=1_000_000.0)
    with pytest.raises(services.QuotaExceeded):
        services.quota_check(organisation=team, duration_seconds=100 * 60 + 1)


# ---- time limits -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (2.7, (303, 363)),  # base 300 + ceil(2.7 x 1.0); hard = soft + 60
        (3600.0, (3900, 3960)),
        (None, (300 + 4 * 3600, 360 + 4 * 3600)),  # unknown (presigned): the longest allowed
        (10 * 3600.0, (6 * 3600 - 60, 6 * 3600)),  # capped under the broker's ceiling
    ],
)
def test_time_limits_scale_with_the_duration(duration, expected):
    assert services.time_limits(duration) == expected


def test_a_ceiling_of_a_minute_or_less_still_gives_a_positive_soft_limit_first(settings):
    """A worker whose ceiling was under a minute (a test's) published jobs with a soft limit of
    -45 s: every one failed at once with `time_limit`."""
    settings.CELERY_MAX_TASK_TIME_LIMIT = 15

    soft, hard = services.time_limits(2.4)

    assert 0 < soft < hard <= 15


def test_time_limits_follow_their_settings(settings):
    settings.TRANSCRIPTION_TIME_LIMIT_BASE = 60
    settings.TRANSCRIPTION_TIME_LIMIT_FACTOR = 0.5

    assert services.time_limits(100.0) == (110, 170)


# ---- dispatch after commit ---------------------------------------------------------------------
def _new_job(organisation) -> TranscriptionJob:
    return services._create_job(
        job_id=uuid.uuid4(),
        organisation=organisation,
        user=None,
        options=services.JobOptions(language="en"),
        audio_key="org/x/audio/y.mp3",
        duration_seconds=10.0,
        audio_validated=True,
    )


def test_a_job_is_published_only_when_its_transaction_commits(
    publish, django_capture_on_commit_callbacks
):
    organisation = OrganisationFactory()

    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        job = _new_job(organisation)
        publish.assert_not_called()

    # One publishing hook; the others refresh cached reads (apps.core.generations) or wake the
    # live feed's streams (apps.feed).
    others = ("GenerationalCache", "wake_streams")
    assert len([c for c in callbacks if not any(o in c.__qualname__ for o in others)]) == 1
    assert published_ids(publish) == [str(job.pk)]


def test_a_job_created_in_a_transaction_that_rolls_back_publishes_nothing(
    publish, django_capture_on_commit_callbacks
):
    organisation = OrganisationFactory()

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        _new_job(organisation)
        raise RuntimeError("rolled back")

    assert callbacks == []
    publish.assert_not_called()
    assert TranscriptionJob.objects.count() == 0


def test_dispatch_publishes_only_queued_jobs(publish):
    queued = JobFactory()
    cancelled = JobFactory(status=JobStatus.CANCELLED)

    assert services.job_dispatch(job_id=queued.pk) is True
    assert services.job_dispatch(job_id=cancelled.pk) is False

    assert published_ids(publish) == [str(queued.pk)]
    queued.refresh_from_db()
    assert queued.dispatched_at is not None


class _AtomicBlocks(ast.NodeVisitor):
    """Finds `.delay(` / `.apply_async(` calls lexically inside an atomic block."""

    def __init__(self) -> None:
        self.depth = 0
        self.found: list[int] = []

    @staticmethod
    def _is_atomic(node: ast.expr) -> bool:
        target = node.func if isinstance(node, ast.Call) else node
        return isinstance(target, ast.Attribute | ast.Name) and (
            getattr(target, "attr", None) == "atomic" or getattr(target, "id", None) == "atomic"
        )

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        atomic = any(self._is_atomic(d) for d in node.decorator_list)
        saved, self.depth = self.depth, (1 if atomic else 0)  # a nested def runs later
        self.generic_visit(node)
        self.depth = saved

    def visit_Lambda(self, node: ast.Lambda) -> None:
        saved, self.depth = self.depth, 0  # on_commit(lambda: ...) runs after commit
        self.generic_visit(node)
        self.depth = saved

    def visit_With(self, node: ast.With) -> None:
        atomic = any(self._is_atomic(item.context_expr) for item in node.items)
        self.depth += atomic
        self.generic_visit(node)
        self.depth -= atomic

    def visit_Call(self, node: ast.Call) -> None:
        name = getattr(node.func, "attr", None)
        if self.depth and name in {"delay", "apply_async"}:
            self.found.append(node.lineno)
        self.generic_visit(node)


def test_no_task_is_published_inside_an_atomic_block():
    sources = [*(REPO / "apps" / "audio_jobs").rglob("*.py"), REPO / "workers" / "transcription.py"]
    offenders = []
    for path in sources:
        finder = _AtomicBlocks()
        finder.visit(ast.parse(path.read_text()))
        offenders += [f"{path.relative_to(REPO)}:{line}" for line in finder.found]

    assert offenders == []


# ---- the sweeper -------------------------------------------------------------------------------
def test_the_sweeper_publishes_a_queued_job_that_was_never_published(publish):
    lost = JobFactory()
    age(lost, created_at=timezone.now() - timedelta(minutes=2))
    fresh = JobFactory()  # its on-commit dispatch may still be on the way

    counts = services.jobs_redispatch_stale()

    assert counts == {"published": 1, "republished": 0, "requeued": 0}
    assert published_ids(publish) == [str(lost.pk)]
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert lost.dispatched_at is not None
    assert fresh.dispatched_at is None


def test_the_sweeper_publishes_again_a_job_published_long_ago(publish, settings):
    settings.JOB_REDISPATCH_AFTER_SECONDS = 600
    stale = JobFactory()
    recent = JobFactory()
    age(
        stale,
        created_at=timezone.now() - timedelta(hours=1),
        dispatched_at=timezone.now() - timedelta(minutes=11),
    )
    age(
        recent,
        created_at=timezone.now() - timedelta(hours=1),
        dispatched_at=timezone.now() - timedelta(minutes=9),
    )

    services.jobs_redispatch_stale()

    assert published_ids(publish) == [str(stale.pk)]


def test_the_sweeper_leaves_a_job_queued_when_the_broker_is_still_down(publish):
    lost = JobFactory()
    age(lost, created_at=timezone.now() - timedelta(minutes=2))
    publish.side_effect = ConnectionError("broker down")

    counts = services.jobs_redispatch_stale()

    assert counts == {"published": 0, "republished": 0, "requeued": 0}
    lost.refresh_from_db()
    assert (lost.status, lost.dispatched_at) == (JobStatus.QUEUED, None)


def test_the_sweeper_requeues_a_processing_job_whose_worker_stopped_beating(publish, settings):
    settings.JOB_HEARTBEAT_TIMEOUT_SECONDS = 60
    abandoned = JobFactory(status=JobStatus.PROCESSING, worker="gone:1", attempts=1)
    alive = JobFactory(status=JobStatus.PROCESSING, worker="busy:2", attempts=1)
    age(abandoned, heartbeat_at=timezone.now() - timedelta(minutes=5), dispatched_at=timezone.now())
    age(alive, heartbeat_at=timezone.now() - timedelta(seconds=10), dispatched_at=timezone.now())

    counts = services.jobs_redispatch_stale()

    assert counts == {"published": 0, "republished": 0, "requeued": 1}
    assert published_ids(publish) == [str(abandoned.pk)]
    abandoned.refresh_from_db()
    assert (abandoned.status, abandoned.worker) == (JobStatus.QUEUED, "")
    assert abandoned.dispatched_at is not None
    alive.refresh_from_db()
    assert alive.status == JobStatus.PROCESSING
    # The job's history shows the requeue (an update, which sends no signal, wrote it itself).
    from auditlog.models import LogEntry

    latest = LogEntry.objects.get_for_object(abandoned).order_by("-pk").first()
    assert latest.changes_dict["status"] == ["processing", "queued"]
    assert latest.changes_dict["worker"] == ["gone:1", ""]


def test_the_sweeper_leaves_a_silent_job_alone_while_a_live_worker_holds_its_lease(
    publish, settings
):
    settings.JOB_HEARTBEAT_TIMEOUT_SECONDS = 60
    job = JobFactory(status=JobStatus.PROCESSING, worker="slow:1")
    age(job, heartbeat_at=timezone.now() - timedelta(minutes=5))
    lease = JobLease(str(job.pk))
    assert lease.acquire()
    try:
        counts = services.jobs_redispatch_stale()
    finally:
        lease.release()

    assert counts == {"published": 0, "republished": 0, "requeued": 0}
    publish.assert_not_called()
    job.refresh_from_db()
    assert job.status == JobStatus.PROCESSING


# ---- the poison-message cap --------------------------------------------------------------------
def test_a_job_delivered_too_often_is_failed_and_dead_lettered(
    settings, django_capture_on_commit_callbacks
):
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(status=JobStatus.PROCESSING, attempts=3, started_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        outcome, claimed = processing._claim(str(job.pk), 0)

    assert (outcome, claimed) == ("poison", None)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "too_many_attempts"
    assert "interrupted 3 times" in job.error_message
    assert job.finished_at is not None
    letter = DeadLetter.objects.get()
    assert letter.task_name == "workers.transcription.transcribe_job"
    assert letter.args == [str(job.pk)]
    assert letter.queue == "transcription.cpu"
    assert letter.attempts == 3
    assert letter.status == DeadLetter.Status.PENDING


def test_no_dead_letter_is_written_when_the_poison_claim_rolls_back(
    settings, django_capture_on_commit_callbacks
):
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(attempts=3)

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        processing._claim(str(job.pk), 0)
        raise RuntimeError("rolled back")

    assert callbacks == []

    assert DeadLetter.objects.count() == 0
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 3)


def test_deliberate_retries_do_not_count_against_the_cap(settings):
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(attempts=3)

    outcome, claimed = processing._claim(str(job.pk), 1)

    assert outcome == "claimed"
    assert (claimed.status, claimed.attempts) == (JobStatus.PROCESSING, 4)


def test_a_claim_below_the_cap_starts_processing(settings):
    settings.JOB_MAX_DELIVERIES = 3
    job = JobFactory(attempts=2)

    outcome, claimed = processing._claim(str(job.pk), 0)

    assert (outcome, claimed.pk) == ("claimed", job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.PROCESSING, 3)
    assert job.heartbeat_at is not None and job.worker
    assert DeadLetter.objects.count() == 0


# ---- the job lease -----------------------------------------------------------------------------
def test_a_second_lease_on_the_same_job_fails_until_the_first_is_released():
    job_id = str(uuid.uuid4())
    first, second = JobLease(job_id), JobLease(job_id)

    assert first.acquire() is True
    try:
        assert second.acquire() is False
    finally:
        first.release()
    try:
        assert second.acquire() is True
    finally:
        second.release()


def test_leases_of_different_jobs_do_not_block_each_other():
    one, other = JobLease(str(uuid.uuid4())), JobLease(str(uuid.uuid4()))

    with one as got_one, other as got_other:
        assert (got_one, got_other) == (True, True)


def test_a_lease_is_freed_when_its_connection_dies():
    job_id = str(uuid.uuid4())
    first = JobLease(job_id)
    assert first.acquire()

    first._conn.close()  # what a killed worker's connection does
    first._conn = None
    second = JobLease(job_id)

    assert second.acquire() is True
    second.release()


def test_a_lease_connection_whose_lock_query_fails_is_closed_and_the_failure_is_transient():
    real_connect = psycopg.connect
    opened: list[psycopg.Connection] = []

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        opened.append(conn)
        # The server goes away between the connection and the query (a restart, a failover).
        conn.execute = mock.Mock(side_effect=psycopg.OperationalError("server closed"))
        return conn

    lease = JobLease(str(uuid.uuid4()))
    with (
        mock.patch.object(leases.psycopg, "connect", connect),
        pytest.raises(leases.LeaseUnavailable) as raised,
    ):
        lease.acquire()

    assert isinstance(raised.value, TransientError)
    assert [conn.closed for conn in opened] == [True]
    assert lease._conn is None


def test_a_lease_connection_is_named_apart_from_the_pool_in_pg_stat_activity():
    lease = JobLease(str(uuid.uuid4()))
    with lease, connection.cursor() as cursor:
        cursor.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s",
            [lease._conn.info.backend_pid],
        )
        (name,) = cursor.fetchone()

    assert name == f"{connection.settings_dict['OPTIONS']['application_name']}-lease"


# ---- cleanup of stored audio -------------------------------------------------------------------
@pytest.fixture
def clip(speech) -> Path:
    return speech.say("Hello there, this is a short test.", fmt="mp3")


def test_the_stored_audio_is_removed_when_creating_the_job_fails(media_root, clip):
    organisation = OrganisationFactory()

    with (
        mock.patch.object(services, "_create_job", side_effect=RuntimeError("database gone")),
        pytest.raises(RuntimeError, match="database gone"),
    ):
        create_from_clip(organisation, clip)

    assert media_files(media_root) == []


@pytest.mark.django_db(transaction=True)
def test_a_publish_hook_that_raises_after_the_commit_keeps_the_jobs_audio(media_root, clip):
    """The job is committed: its file is its audio. The sweeper publishes the job later."""
    organisation = OrganisationFactory()

    with mock.patch.object(
        services, "job_dispatch", side_effect=OperationalError("server closed the connection")
    ):
        job, created = create_from_clip(organisation, clip)

    assert created
    job.refresh_from_db()
    assert (job.status, job.dispatched_at) == (JobStatus.QUEUED, None)
    assert media_files(media_root) == [job.audio_key]


@pytest.mark.django_db(transaction=True)
def test_an_interrupt_after_the_commit_keeps_the_jobs_audio(media_root, clip):
    """What is raised past a robust hook (a worker's SystemExit) leaves the committed job whole."""
    organisation = OrganisationFactory()

    with (
        mock.patch.object(services, "job_dispatch", side_effect=SystemExit(1)),
        pytest.raises(SystemExit),
    ):
        create_from_clip(organisation, clip)

    job = TranscriptionJob.objects.get(organisation=organisation)
    assert media_files(media_root) == [job.audio_key]


@pytest.mark.django_db(transaction=True)
def test_a_job_row_that_cannot_be_written_discards_the_stored_audio(media_root, clip):
    organisation = OrganisationFactory()
    real_create = TranscriptionJob.objects.create

    def create(**fields):
        real_create(**fields)
        raise OperationalError("server closed the connection")  # lost before the commit

    with (
        mock.patch.object(TranscriptionJob.objects, "create", side_effect=create),
        pytest.raises(OperationalError),
    ):
        create_from_clip(organisation, clip)

    assert not TranscriptionJob.objects.filter(organisation=organisation).exists()
    assert media_files(media_root) == []


def test_a_deleted_jobs_audio_stays_until_the_delete_commits(
    media_root, clip, django_capture_on_commit_callbacks
):
    job, _ = create_from_clip(OrganisationFactory(), clip)

    with pytest.raises(RuntimeError), transaction.atomic():
        services.job_delete(job=job)
        raise RuntimeError("rolled back")
    kept = media_files(media_root)
    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=job)

    assert kept == [job.audio_key]
    assert media_files(media_root) == []
    assert not TranscriptionJob.objects.filter(pk=job.pk).exists()


# ---- admin actions -----------------------------------------------------------------------------
def test_the_admin_cancel_action_skips_a_job_that_finished_meanwhile(client, settings):
    from apps.accounts.models import User
    from apps.core.exceptions import ConflictError

    admin = User.objects.create_superuser("root@example.com", "a-long-Passphrase-42")
    client.force_login(admin)
    finished, queued = JobFactory(), JobFactory()
    real_cancel = services.job_cancel

    def cancel(*, job):
        if job.pk == finished.pk:  # completed between the page load and the action
            raise ConflictError("The job is already completed.", code="job_not_cancellable")
        return real_cancel(job=job)

    with mock.patch.object(services, "job_cancel", side_effect=cancel):
        response = client.post(
            f"/{settings.ADMIN_URL}audio_jobs/transcriptionjob/",
            {"action": "cancel_jobs", "_selected_action": [finished.pk, queued.pk]},
            follow=True,
        )

    assert response.status_code == 200
    assert "Cancelled 1 job(s)." in response.content.decode()
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
