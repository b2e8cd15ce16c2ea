"""Backup gauges on the web /metrics, from real `manage.py backup` runs into BACKUP_DIR."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families

from apps.core.backups import DUMP_NAME, MANIFEST_NAME, backups_list

TOKEN = "s3cret-metrics-token"
LAST = "lexiscore_backup_last_success_timestamp_seconds"
COUNT = "lexiscore_backup_count"


@pytest.fixture
def backup_dir(settings, tmp_path) -> Path:
    settings.METRICS_TOKEN = TOKEN
    settings.BACKUP_DIR = tmp_path / "backups"
    return settings.BACKUP_DIR


def scrape(client) -> dict[str, float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        if family.name in (LAST, COUNT)
        for sample in family.samples
    }


def finished_at(backup: Path) -> float:
    manifest = json.loads((backup / MANIFEST_NAME).read_text())
    return datetime.fromisoformat(manifest["finished_at"]).timestamp()


def test_no_backup_is_a_count_of_zero_and_no_timestamp(client, db, backup_dir):
    gauges = scrape(client)

    assert gauges == {COUNT: 0.0}


def test_the_gauges_report_the_newest_backup_written_by_manage_py_backup(
    client, transactional_db, backup_dir
):
    started = time.time()
    call_command("backup", "--no-file-checksums")
    call_command("backup", "--no-file-checksums")
    ended = time.time()

    gauges = scrape(client)

    oldest, newest = backups_list(backup_dir)
    assert finished_at(oldest) < finished_at(newest)
    assert gauges == {COUNT: 2.0, LAST: finished_at(newest)}
    assert started <= gauges[LAST] <= ended


def test_a_backup_in_progress_or_damaged_is_not_counted(client, transactional_db, backup_dir):
    call_command("backup", "--no-file-checksums")
    (complete,) = backups_list(backup_dir)
    # Later backups that are no success: one still being written (backup_create's folder before
    # its rename), one renamed by hand without its manifest, one whose dump was cut short.
    in_progress = backup_dir / ".lexiscore-29990101T000000000000Z.partial"
    in_progress.mkdir()
    shutil.copy(complete / DUMP_NAME, in_progress / DUMP_NAME)
    no_manifest = backup_dir / "lexiscore-29990101T000001000000Z"
    no_manifest.mkdir()
    shutil.copy(complete / DUMP_NAME, no_manifest / DUMP_NAME)
    truncated = backup_dir / "lexiscore-29990101T000002000000Z"
    shutil.copytree(complete, truncated)
    manifest = json.loads((truncated / MANIFEST_NAME).read_text())
    manifest.update(name=truncated.name, finished_at="2999-01-01T00:00:03+00:00")
    (truncated / MANIFEST_NAME).write_text(json.dumps(manifest))
    with (truncated / DUMP_NAME).open("r+b") as dump:
        dump.truncate(manifest["dump"]["size"] // 2)

    gauges = scrape(client)

    assert gauges == {COUNT: 1.0, LAST: finished_at(complete)}


def test_a_copy_of_a_backup_under_another_name_is_not_counted(client, transactional_db, backup_dir):
    call_command("backup", "--no-file-checksums")
    (complete,) = backups_list(backup_dir)
    shutil.copytree(complete, backup_dir / "lexiscore-29990101T000000000000Z")

    gauges = scrape(client)

    assert gauges == {COUNT: 1.0, LAST: finished_at(complete)}


def test_a_backup_damaged_after_a_scrape_stops_counting(client, transactional_db, backup_dir):
    call_command("backup", "--no-file-checksums")
    (backup,) = backups_list(backup_dir)
    before = scrape(client)

    with (backup / DUMP_NAME).open("r+b") as dump:
        dump.truncate(100)
    after = scrape(client)

    assert before == {COUNT: 1.0, LAST: finished_at(backup)}
    assert after == {COUNT: 0.0}
