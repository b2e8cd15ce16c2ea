"""Prometheus rules and config load in promtool; Grafana files are well-formed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "docker" / "prometheus" / "rules").glob("*.yml"))
REQUIRED_ALERTS = {
    "ApiLatencyP95High",
    "ApiErrorRateHigh",
    "QueueBacklogHigh",
    "QueueOldestMessageTooOld",
    "DeadLettersAppeared",
    "WorkerDown",
    "WorkerMissing",
    "WebMissing",
    "WhisperBatchOutOfMemory",
    "DatabaseUnavailable",
    "RedisUnavailable",
    "DiskFillingUp",
    "BackupTooOld",
    "BackupMissing",
    "StoredFileDeletesFailing",
}


def test_alert_rules_have_the_required_alerts_with_summaries():
    rules = [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]

    names = {rule["alert"] for rule in rules}
    assert names >= REQUIRED_ALERTS
    assert all(rule["annotations"]["summary"] and rule["labels"]["severity"] for rule in rules)
    assert all(f"`{name}`" in (ROOT / "docs" / "operations.md").read_text() for name in names)


def test_promtool_accepts_the_rules_and_the_config(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, (
        "promtool missing: it ships in Debian's `prometheus` package (see docs/operations.md)"
    )
    config = (ROOT / "docker" / "prometheus" / "prometheus.yml").read_text()
    rules_dir = ROOT / "docker" / "prometheus" / "rules"
    (tmp_path / "token").write_text("x")
    local = config.replace("/etc/prometheus/rules", str(rules_dir)).replace(
        "/run/secrets/metrics_token", str(tmp_path / "token")
    )
    (tmp_path / "prometheus.yml").write_text(local)

    rules = subprocess.run(
        [promtool, "check", "rules", *map(str, RULES)], capture_output=True, text=True
    )
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )

    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_of_the_alert_rules_pass():
    """docker/prometheus/tests/*.test.yml: e.g. BackupTooOld fires 26 h after the last backup,
    not before, and a scrape gap neither resolves it nor restarts BackupMissing's 26 h."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: see test_promtool_accepts_the_rules_and_the_config"
    unit_tests = sorted((ROOT / "docker" / "prometheus" / "tests").glob("*.test.yml"))

    result = subprocess.run(
        [promtool, "test", "rules", *map(str, unit_tests)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert {path.name for path in unit_tests} >= {
        "backups.test.yml",
        "deadletters.test.yml",
        "storage.test.yml",
    }
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboards_are_valid_and_use_the_provisioned_datasource():
    dashboards = sorted((ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))

    loaded = [json.loads(path.read_text()) for path in dashboards]

    assert dashboards
    for dashboard in loaded:
        assert dashboard["uid"] and dashboard["title"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "prometheus"
            assert all(target["expr"].strip() for target in panel["targets"])
    datasource = yaml.safe_load(
        (ROOT / "docker/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["uid"] == "prometheus"
