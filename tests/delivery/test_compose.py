"""docker-compose.yml: valid, secret-free, healthy-by-construction, one worker per queue."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from workers.queues import Queue

from .conftest import COMPOSE_ENV, ROOT, render_compose, run_tool
from .dockerfile import shell_words, stages

ONE_SHOT = {"migrate", "minio-init"}
WORKERS = {"worker-transcription-cpu", "worker-transcription-gpu", "worker-default"}
APP_SERVICES = {"migrate", "web", "web-events", "web-openai", "beat", "flower", *WORKERS}
# Variable names whose values are credentials (or URLs that may carry them).
SECRET_NAME = re.compile(
    r"SECRET|PASSWORD|TOKEN|SIGNING_KEY|ACCESS_KEY|ENCRYPTION_KEY|BASIC_AUTH|DSN|DATABASE_URL"
    r"|EMAIL_URL|ROOT_USER"
)
ONLY_A_REFERENCE = re.compile(r"\$\{[A-Z][A-Z0-9_]*(?::?[-?][^}]*)?\}")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us)")


def seconds(duration: str) -> float:
    """A Compose duration (10m, 1m30s, 45s) in seconds."""
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    parts = DURATION_PART.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * scale[unit] for number, unit in parts)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def pools(command: list[str]) -> set[str]:
    """Every pool the command asks for, in any of Celery's spellings (-P x, -Px, --pool[=]x)."""
    found = set()
    for index, word in enumerate(command):
        if word in ("-P", "--pool"):
            found.add(command[index + 1])
        elif word.startswith("--pool="):
            found.add(word.split("=", 1)[1])
        elif word.startswith("-P") and len(word) > 2:
            found.add(word[2:])
    return found


def long_running(compose: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in compose["services"].items() if name not in ONE_SHOT}


def environment_entries(compose_raw: dict[str, Any]):
    for name, service in compose_raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            yield name, key, value


def test_compose_file_matches_the_compose_specification_schema():
    result = run_tool(
        "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_resolves_the_file_with_every_profile(compose):
    assert set(compose["services"]) == {
        "postgres",
        "redis",
        "minio",
        "minio-init",
        "migrate",
        "web",
        "web-events",
        "web-openai",
        "beat",
        "flower",
        *WORKERS,
    }


def test_the_gpu_worker_starts_only_with_the_gpu_profile(tmp_path):
    result = render_compose(tmp_path, COMPOSE_ENV)

    assert result.returncode == 0, result.stderr
    assert '"worker-transcription-gpu"' not in result.stdout


@pytest.mark.parametrize(
    "missing",
    [
        "DJANGO_SECRET_KEY",
        "JWT_SIGNING_KEY",
        "FIELD_ENCRYPTION_KEYS",
        "DJANGO_ALLOWED_HOSTS",
        "DATABASE_URL",
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "EMAIL_URL",
        "FLOWER_BASIC_AUTH",
    ],
)
def test_a_missing_secret_stops_compose_with_a_message_naming_it(tmp_path, missing):
    values = {name: value for name, value in COMPOSE_ENV.items() if name != missing}

    result = render_compose(tmp_path, values)

    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr


def test_no_secret_is_written_in_the_compose_file(compose_raw):
    for service, key, value in environment_entries(compose_raw):
        if SECRET_NAME.search(key):
            assert value is None or ONLY_A_REFERENCE.fullmatch(str(value)), (service, key)
            if value is not None and key != "DJANGO_SECRET_KEY_FALLBACKS":
                assert ":?" in str(value), f"{service}.{key} must be required, not defaulted"


def test_no_credentials_appear_anywhere_in_the_file():
    text = (ROOT / "docker-compose.yml").read_text()
    outside_references = re.sub(r"\$\{[^}]*\}", "", text)

    assert not re.search(r"://[^/\s:@]*:[^/\s@]+@", outside_references)


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, service in long_running(compose).items():
        healthcheck = service.get("healthcheck", {})

        assert healthcheck.get("test") and not healthcheck.get("disable"), name
        assert service["restart"] == "unless-stopped", name


def test_one_shot_services_do_not_restart(compose):
    for name in ONE_SHOT:
        assert compose["services"][name]["restart"] == "no"


def test_depends_on_waits_for_health_or_completion(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            condition = rule["condition"]
            if dependency in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, dependency)
            else:
                assert condition == "service_healthy", (name, dependency)
                assert services[dependency].get("healthcheck", {}).get("test"), dependency


def test_application_processes_start_after_migrations_and_storage_setup(compose):
    for name in APP_SERVICES - {"migrate"}:
        depends_on = compose["services"][name]["depends_on"]

        assert {"migrate", "postgres", "redis", "minio-init"} <= set(depends_on), name


def test_redis_keeps_queued_tasks_and_never_evicts_them(compose):
    command = compose["services"]["redis"]["command"]

    assert option(command, "--appendonly") == "yes"
    assert option(command, "--maxmemory-policy") == "noeviction"


def test_cache_and_broker_use_different_redis_databases(compose):
    environment = compose["services"]["web"]["environment"]

    assert environment["REDIS_URL"] != environment["CELERY_BROKER_URL"]


def test_every_queue_is_consumed_by_exactly_one_worker_service(compose):
    consumed: list[str] = []
    for name in WORKERS:
        consumed += option(compose["services"][name]["command"], "-Q").split(",")

    assert sorted(consumed) == sorted(str(queue) for queue in Queue)


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_workers_use_prefork_and_a_named_node_their_healthcheck_pings(compose, name):
    service = compose["services"][name]
    command = service["command"]
    node_prefix = option(command, "--hostname").split("@")[0]

    assert command[:4] == ["celery", "-A", "lexiscore", "worker"]
    # Not solo: Celery's time limits only work in the prefork pool. The GPU worker's thread pool
    # is the exception: its jobs enforce their own deadline (workers.transcription._deadline).
    expected = "threads" if name == "worker-transcription-gpu" else "prefork"
    assert pools(command) == {expected}
    assert option(command, "--hostname").endswith("@%h")
    assert f"inspect ping -d {node_prefix}@$${{HOSTNAME}}" in " ".join(
        service["healthcheck"]["test"]
    )


def test_the_cpu_transcription_worker_runs_one_task_at_a_time(compose):
    command = compose["services"]["worker-transcription-cpu"]["command"]

    assert option(command, "--concurrency") == "1"


def test_the_gpu_worker_feeds_one_model_from_many_job_threads(compose):
    service = compose["services"]["worker-transcription-gpu"]
    environment = service["environment"]

    # The settings measured for issue #7's targets (docs/benchmarks.md): 100 jobs in flight,
    # 4 model streams, preparation in 12 processes with the VAD on the GPU.
    assert int(option(service["command"], "--concurrency")) == 100
    assert environment["WHISPER_CROSS_JOB_BATCHING"] == "true"
    assert environment["WHISPER_MODEL_STREAMS"] == "4"
    assert environment["WHISPER_PREPARE_PROCESSES"] == "12"
    assert environment["WHISPER_VAD_DEVICE"] == "cuda"
    assert environment["WHISPER_PRELOAD_PROFILES"] == "tiny.en,base"
    # Job threads check pooled connections out only briefly (processing.release_connection).
    assert 16 <= int(environment["DB_POOL_MAX_SIZE"]) < 100
    assert int(environment["WORKER_MAX_RSS_MB"]) > 0


def test_postgres_takes_a_lease_per_running_job_beside_every_pool(compose):
    """A running job holds a connection for its lease beside the pooled ones: the GPU worker's
    concurrency plus its pool, the other workers' and web's pools (docs/deployment.md)."""
    command = compose["services"]["postgres"]["command"]
    max_connections = int(option(command, "-c").split("=")[1])
    gpu = compose["services"]["worker-transcription-gpu"]

    needed = int(option(gpu["command"], "--concurrency")) + int(
        gpu["environment"]["DB_POOL_MAX_SIZE"]
    )
    assert option(command, "-c").startswith("max_connections=")
    assert max_connections >= needed + 100  # web, the other workers, beat, admin sessions


def test_the_cpu_worker_runs_faster_whisper_on_the_cpu(compose):
    service = compose["services"]["worker-transcription-cpu"]

    assert option(service["command"], "-Q") == "transcription.cpu"
    assert service["environment"]["WHISPER_ENGINE"] == "faster-whisper"
    assert service["environment"]["WHISPER_DEVICE"] == "cpu"


def test_the_gpu_worker_reserves_one_nvidia_gpu_in_the_gpu_profile(compose):
    service = compose["services"]["worker-transcription-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]

    assert service["profiles"] == ["gpu"]
    assert option(service["command"], "-Q") == "transcription.gpu"
    assert service["environment"]["WHISPER_DEVICE"] == "cuda"
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service["build"]["target"] == "gpu"


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_stopping_a_worker_escalates_before_docker_kills_it(compose, name):
    service = compose["services"][name]
    warm = float(service["environment"]["WORKER_WARM_SHUTDOWN_SECONDS"])
    soft = float(service["environment"].get("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT") or 30)

    assert service["entrypoint"] == [
        "/usr/bin/tini",
        "--",
        "python",
        "/app/docker/worker_entrypoint.py",
    ]
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    # Warm shutdown, then Celery's soft shutdown, then a margin, all before SIGKILL.
    assert seconds(service["stop_grace_period"]) >= warm + soft + 15


def test_web_drains_requests_before_it_is_killed(compose):
    service = compose["services"]["web"]
    graceful = float(service["environment"]["GUNICORN_GRACEFUL_TIMEOUT"])

    assert seconds(service["stop_grace_period"]) > graceful
    assert service["command"] == [
        "gunicorn",
        "--config",
        "lexiscore/gunicorn_conf.py",
        "lexiscore.wsgi:application",
    ]


def test_application_containers_are_locked_down(compose):
    for name in APP_SERVICES:
        service = compose["services"][name]

        assert service.get("user") in (None, "10001", "10001:10001"), name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_application_services_use_images_built_from_this_dockerfile(compose):
    targets = {stage.name for stage in stages(ROOT / "Dockerfile")}
    for name in APP_SERVICES:
        build = compose["services"][name]["build"]

        assert build["target"] in targets, name
        assert build["context"] == str(ROOT), name


def test_backups_are_written_by_the_maintenance_worker_and_seen_by_web(compose):
    """The nightly backup task runs where the maintenance queue is consumed; web's /metrics
    reads the same folder (BackupTooOld / BackupMissing); both survive container restarts."""
    backup_dir = "/var/lib/lexiscore/backups"

    def mount(name: str) -> dict[str, Any]:
        [volume] = [
            v for v in compose["services"][name].get("volumes", []) if v["target"] == backup_dir
        ]
        return volume

    [writer] = [
        name
        for name in WORKERS
        if "maintenance" in option(compose["services"][name]["command"], "-Q").split(",")
    ]
    assert mount(writer)["type"] == "volume" and not mount(writer).get("read_only")
    assert mount("web")["source"] == mount(writer)["source"]
    assert mount("web")["read_only"] is True
    assert mount(writer)["source"] in compose["volumes"]


def test_one_beat_with_a_persistent_schedule(compose):
    beat = compose["services"]["beat"]
    mounts = {volume["target"]: volume.get("source") for volume in beat["volumes"]}

    assert option(beat["command"], "--schedule") == "/var/lib/lexiscore/celerybeat-schedule"
    assert mounts["/var/lib/lexiscore"] == "beat-data"
    assert beat.get("deploy", {}).get("replicas", 1) == 1


def test_flower_requires_basic_auth_and_listens_on_localhost_only(compose):
    flower = compose["services"]["flower"]

    assert flower["environment"]["FLOWER_BASIC_AUTH"] == COMPOSE_ENV["FLOWER_BASIC_AUTH"]
    assert all(port["host_ip"] == "127.0.0.1" for port in flower["ports"])


def test_only_the_web_services_flower_and_minio_publish_ports(compose):
    publishing = {name for name, service in compose["services"].items() if service.get("ports")}

    assert publishing == {"web", "web-events", "web-openai", "flower", "minio"}
    for name in ("web", "web-events", "web-openai", "minio"):
        for port in compose["services"][name]["ports"]:
            assert port["host_ip"] == "127.0.0.1", name


def test_the_events_service_serves_the_asgi_application_with_uvicorns_worker(compose):
    service = compose["services"]["web-events"]

    assert service["command"] == [
        "gunicorn",
        "--config",
        "lexiscore/gunicorn_conf.py",
        "lexiscore.asgi:application",
    ]
    assert service["environment"]["GUNICORN_WORKER_CLASS"] == "uvicorn_worker.UvicornWorker"
    assert seconds(service["stop_grace_period"]) > float(
        service["environment"]["GUNICORN_GRACEFUL_TIMEOUT"]
    )


def test_the_openai_service_lets_fewer_requests_wait_than_it_has_threads(compose):
    """Each waiting request holds a thread: one always stays free for health checks and the
    503 that tells the next caller to come back."""
    service = compose["services"]["web-openai"]
    environment = service["environment"]

    assert service["command"][-1] == "lexiscore.wsgi:application"
    assert int(environment["GUNICORN_THREADS"]) > int(environment["OPENAI_COMPAT_MAX_WAITING"])
    assert seconds(service["stop_grace_period"]) > float(environment["GUNICORN_GRACEFUL_TIMEOUT"])


def test_third_party_images_are_pinned(compose):
    for name, service in compose["services"].items():
        if name in APP_SERVICES:
            continue
        image = service["image"]

        assert ":" in image and not image.endswith(":latest"), name


def test_stateful_data_lives_in_named_volumes(compose):
    def sources(name: str) -> dict[str, str]:
        return {v["target"]: v.get("source") for v in compose["services"][name]["volumes"]}

    assert sources("postgres")["/var/lib/postgresql/data"] == "postgres-data"
    assert sources("redis")["/data"] == "redis-data"
    assert sources("minio")["/data"] == "minio-data"
    for name in ("web", "worker-transcription-cpu", "worker-transcription-gpu"):
        assert sources(name)["/var/lib/lexiscore/models"] == "models"
        assert compose["services"][name]["environment"]["WHISPER_MODEL_CACHE_DIR"] == (
            "/var/lib/lexiscore/models"
        )


def test_the_minio_init_script_is_mounted_from_this_repository(compose):
    init = compose["services"]["minio-init"]
    mount = next(v for v in init["volumes"] if v["target"] == "/docker/minio/init.sh")

    assert (ROOT / "docker" / "minio" / "init.sh").is_file()
    assert mount["source"] == str(ROOT / "docker" / "minio" / "init.sh")
    assert mount["read_only"] is True
    assert init["entrypoint"] == ["/bin/sh", "/docker/minio/init.sh"]


def required_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", (ROOT / "docker-compose.yml").read_text()))


def test_application_services_read_the_env_file(compose_raw):
    for name in APP_SERVICES:
        assert compose_raw["services"][name]["env_file"] == [
            {"path": "${LEXISCORE_ENV_FILE:-.env}", "required": False}
        ], name


def test_settings_from_the_env_file_reach_the_application(tmp_path):
    values = {**COMPOSE_ENV, "GUNICORN_WORKERS": "7", "ARGON2_TIME_COST": "3"}

    result = render_compose(tmp_path, values)

    web = json.loads(result.stdout)["services"]["web"]["environment"]
    assert web["GUNICORN_WORKERS"] == "7"
    assert web["ARGON2_TIME_COST"] == "3"


def dockerfile_env(target: str) -> dict[str, str]:
    found: dict[str, str] = {}
    by_name = {stage.name: stage for stage in stages(ROOT / "Dockerfile")}
    stage = by_name[target]
    chain = [stage]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    for each in chain:
        for arguments in each.all("ENV"):
            found.update(word.split("=", 1) for word in shell_words(arguments) if "=" in word)
    return found


def test_the_image_layout_is_fixed_whatever_the_env_file_says(tmp_path):
    # An .env copied from .env.example carries empty lines such as `STATIC_ROOT=`.
    values = {
        **COMPOSE_ENV,
        "STATIC_ROOT": "",
        "MEDIA_ROOT": "",
        "LEXISCORE_VAR_DIR": "",
        "WHISPER_MODEL_CACHE_DIR": "/somewhere/else",
        "GUNICORN_BIND": "127.0.0.1:9999",
        "GUNICORN_WORKER_TMP_DIR": "",
        "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "900",
    }

    result = render_compose(tmp_path, values, "gpu")

    services = json.loads(result.stdout)["services"]
    image_env = dockerfile_env("runtime")
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        for variable in (
            "STATIC_ROOT",
            "MEDIA_ROOT",
            "LEXISCORE_VAR_DIR",
            "WHISPER_MODEL_CACHE_DIR",
        ):
            assert environment[variable] == image_env[variable], (name, variable)
        assert environment["GUNICORN_BIND"] == "0.0.0.0:8000"
        assert environment["GUNICORN_WORKER_TMP_DIR"] == "/dev/shm"
    for name in WORKERS:
        assert services[name]["environment"]["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] == "30"


def test_env_example_lists_every_variable_compose_requires():
    listed = set(
        re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), flags=re.M)
    )

    assert sorted(required_variables() - listed) == []


def test_a_filled_in_env_example_is_enough_to_start_the_stack(tmp_path):
    """`cp .env.example .env`, fill in the empty required values: compose accepts it."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, equals, value = line.partition("=")
        if equals and name in required_variables() and not value:
            line = f"{name}={COMPOSE_ENV.get(name, 'filled-in-' + name.lower())}"
        lines.append(line)
    process_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LEXISCORE_ENV_FILE": str(tmp_path / "filled.env"),
    }
    (tmp_path / "filled.env").write_text("\n".join(lines) + "\n")

    result = run_tool(
        "docker-compose",
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(tmp_path / "filled.env"),
        "--profile",
        "gpu",
        "config",
        "--quiet",
        env=process_env,
    )

    assert result.returncode == 0, result.stderr


def test_every_variable_compose_reads_is_documented():
    """`${NAME...}` in docker-compose.yml (not `$${NAME}`, which the container's shell reads) is in
    the deployment guide's table or the configuration reference."""
    text = (ROOT / "docker-compose.yml").read_text()
    documented = (ROOT / "docs" / "deployment.md").read_text() + (
        ROOT / "docs" / "configuration.md"
    ).read_text()
    names = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))

    assert {"GPU_WORKER_CONCURRENCY", "POSTGRES_MAX_CONNECTIONS"} <= names
    assert sorted(n for n in names if f"`{n}`" not in documented) == []
