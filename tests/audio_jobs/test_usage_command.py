"""`manage.py usage` recomputes audio minutes per organisation from the jobs."""

import json

import pytest
from django.core.management import call_command

from tests.audio_jobs.factories import CompletedJobFactory

pytestmark = pytest.mark.django_db


def test_usage_sums_this_months_audio_per_organisation(org, capsys):
    CompletedJobFactory(organisation=org, duration_seconds=90)
    CompletedJobFactory(organisation=org, duration_seconds=30)

    call_command("usage", "--organisation", str(org.pk), "--json")

    row = json.loads(capsys.readouterr().out)
    assert row["used_minutes"] == 2.0
    assert row["quota_minutes"] == 120
    assert row["plan"] == "free"


def test_usage_refuses_a_malformed_month():
    with pytest.raises(Exception, match="--month must look like"):
        call_command("usage", "--month", "November")


def test_usage_refuses_an_organisation_id_that_is_not_a_uuid():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not an organisation id"):
        call_command("usage", "--organisation", "acme")
