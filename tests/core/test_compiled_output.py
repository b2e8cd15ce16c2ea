"""CompiledOutput renders exactly what DRF's own Serializer.to_representation renders."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework import serializers

from apps.accounts.api.views.account import MeApi, MembershipOrganisationOutput
from apps.accounts.models import Role
from apps.audio_jobs.api.serializers import JobOutput
from apps.audio_jobs.models import JobPriority, JobStatus
from apps.core.drf import CompiledOutput
from apps.reports.api.views import ReportOutput
from apps.reports.models import Report
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory
from tests.factories import MembershipFactory, UserFactory, member


def drf_representation(serializer_class, instance):
    """What DRF itself renders: the generic field walk on a fresh instance."""
    serializer = serializer_class()
    return serializers.Serializer.to_representation(serializer, instance)


def assert_same(serializer_class, instance):
    assert issubclass(serializer_class, CompiledOutput)
    compiled = serializer_class(instance).data
    assert dict(compiled) == drf_representation(serializer_class, instance)
    assert list(compiled) == list(drf_representation(serializer_class, instance))  # key order


@pytest.mark.parametrize(
    "make",
    [
        lambda: JobFactory(),
        lambda: JobFactory(created_by=UserFactory(), priority=JobPriority.HIGH),
        lambda: CompletedJobFactory(
            created_by=UserFactory(),
            engine_settings={"beam_size": 5, "vad": True},
            processing_seconds=1.25,
            model_sha256="ab" * 32,
            initial_prompt="Zürich, naïve",
        ),
        lambda: JobFactory(
            status=JobStatus.FAILED,
            error_code="audio_decode_failed",
            error_message="Not audio.",
            duration_seconds=None,
            size_bytes=None,
            queued_at=None,
            priority=JobPriority.LOW,
        ),
    ],
    ids=["queued", "with-creator", "completed", "failed-with-nulls"],
)
def test_job_output_is_drfs_output(db, make):
    assert_same(JobOutput, make())


def test_a_page_of_jobs_is_drfs_output(db):
    jobs = [JobFactory(), CompletedJobFactory(created_by=UserFactory())]

    compiled = JobOutput(jobs, many=True).data

    assert compiled == [drf_representation(JobOutput, job) for job in jobs]


def test_report_output_is_drfs_output(db):
    owner = member(Role.OWNER)
    report = Report.objects.create(
        organisation=owner.organisation,
        created_by=owner.user,
        kind="usage",
        format="csv",
        period_start=dt.date(2026, 10, 1),
        period_end=dt.date(2026, 11, 1),
    )
    assert_same(ReportOutput, report)
    report.status = "ready"
    report.finished_at = timezone.now()
    report.size_bytes = 120
    assert_same(ReportOutput, report)


def test_profile_output_with_nested_organisations_is_drfs_output(db):
    owner = member(Role.OWNER)
    MembershipFactory(user=owner.user, role=Role.VIEWER)
    user = owner.user
    user.organisations = list(user.memberships.select_related("organisation"))

    assert_same(MeApi.OutputSerializer, user)
    assert_same(MembershipOrganisationOutput, user.organisations[0])


def test_the_plan_is_built_once_per_class():
    assert JobOutput.representation_plan() is JobOutput.representation_plan()

    # A subclass gets its own plan, not its parent's.
    class Narrower(JobOutput):
        class Meta(JobOutput.Meta):
            fields = ["id", "status"]
            read_only_fields = fields

    assert [name for name, *_ in Narrower.representation_plan()] == ["id", "status"]
