# syntax=docker/dockerfile:1
# riskloop's image: the scoring API by default, and the same image runs Airflow (the Helm chart's
# images.airflow) and the MLflow server, because all three need exactly the pinned environment of
# uv.lock. Build from the repository root:
#   docker build -f infra/serving.Dockerfile -t ghcr.io/riskloop/riskloop:$(git rev-parse --short HEAD) .
#
# Base images are pinned to exact versions (add @sha256 digests in your registry mirror); uv is
# the same version the Makefile bootstraps.

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# --- build: resolve nothing, install exactly uv.lock ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1
WORKDIR /app
# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
# The project itself, installed in place: riskloop finds feature_repo/, dbt_project/, dags/ and
# serving/policies/ next to its package (riskloop.core.config.PROJECT_ROOT).
COPY riskloop ./riskloop
COPY serving ./serving
COPY training ./training
COPY dags ./dags
COPY dbt_project ./dbt_project
COPY feature_repo ./feature_repo
COPY expectations ./expectations
RUN uv sync --frozen --no-dev

# --- runtime: no compiler, no uv, not root ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# libgomp: XGBoost's OpenMP runtime. UID 50000/GID 0 is what the official Airflow chart expects.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 50000 --gid 0 --home-dir /home/riskloop --create-home --shell /usr/sbin/nologin riskloop
COPY --from=build --chown=50000:0 /app /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RISKLOOP_HOME=/home/riskloop/.riskloop \
    AIRFLOW_HOME=/home/riskloop/airflow
WORKDIR /app
USER 50000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["riskloop", "serve", "--host", "0.0.0.0", "--port", "8000"]
