"""infra/: every production artefact parses and says what production needs; the Feast Redis
online store is exercised for real when a ``redis-server`` binary is available.

No cluster and no image registry here, so nothing is deployed: the checks are the ones that catch
the usual breakages (a typo in a key, an unpinned base image, an option the pinned Airflow or
MLflow does not know, a Feast config that no longer loads).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from riskloop.core.config import PROJECT_ROOT
from tests.conftest import free_port

INFRA = PROJECT_ROOT / "infra"
IMAGE_REPO = "ghcr.io/riskloop/riskloop"


def _pinned_version(requirement_prefix: str) -> str:
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    return re.search(rf'"{re.escape(requirement_prefix)}(?:\[[^\]]*\])?==([^"]+)"', text).group(1)


# --- the image ---------------------------------------------------------------------------------

def _dockerfile_stages(text: str) -> list[tuple[str, str | None]]:
    """(image, alias) per FROM, with ``${ARG}`` resolved from the file's ARG defaults."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    stages = []
    for image, alias in re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        stages.append((image, alias or None))
    return stages


def test_serving_image_is_multistage_pinned_non_root_and_frozen() -> None:
    text = (INFRA / "serving.Dockerfile").read_text()
    stages = _dockerfile_stages(text)
    assert len(stages) >= 2, stages
    aliases = {a for _, a in stages if a}
    for image, _ in stages:
        if image in aliases:
            continue
        # An exact version (x.y.z) or a digest: "python:3.12-slim" changes under our feet.
        assert re.search(r":\d+\.\d+\.\d+|@sha256:[0-9a-f]{64}", image), f"unpinned base image {image}"
        assert not image.endswith(":latest"), image
    # The same uv as the Makefile bootstraps, installing exactly the lock file, without dev deps.
    uv_version = re.search(r"^UV_VERSION := (\S+)", (PROJECT_ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"ghcr.io/astral-sh/uv:{uv_version}" in text
    assert "COPY pyproject.toml uv.lock" in text
    syncs = re.findall(r"uv sync [^\n]*", text)
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs), syncs
    # The final stage runs as a non-root user.
    final = text[text.rindex("\nFROM "):]
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users and users[-1] not in ("root", "0"), users
    # Everything the COPY lines name exists (a renamed directory breaks the build).
    for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+\S+$", text, flags=re.M):
        assert (PROJECT_ROOT / src).exists(), src
    assert re.search(r'^CMD \["riskloop", "serve"', text, flags=re.M)


# --- Airflow Helm values -------------------------------------------------------------------------

def test_airflow_helm_values() -> None:
    values = yaml.safe_load((INFRA / "airflow" / "values.yaml").read_text())
    assert values["executor"] in ("CeleryExecutor", "KubernetesExecutor")
    assert values["airflowVersion"] == _pinned_version("apache-airflow")
    assert values["images"]["airflow"]["repository"] == IMAGE_REPO
    assert values["uid"] == 50000  # the image's user (infra/serving.Dockerfile)
    # External Postgres: no bundled database, the connection from a secret.
    assert values["postgresql"]["enabled"] is False
    assert values["data"]["metadataSecretName"]
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], key
    assert values["config"]["core"]["dags_folder"] == "/app/dags"
    assert values["config"]["core"]["simple_auth_manager_all_admins"] == "False"


def test_airflow_helm_config_keys_exist_in_the_pinned_airflow(tmp_path: Path) -> None:
    """Every [section] key under `config:` is an option Airflow 3.2.2 knows (a typo is silently ignored)."""
    values = yaml.safe_load((INFRA / "airflow" / "values.yaml").read_text())
    pairs = [(s, k) for s, opts in values["config"].items() for k in opts]
    # The option catalogue (config.yml), not has_option(): options without a default count too.
    code = ("import json,sys\nfrom airflow.configuration import conf\n"
            "d = conf.configuration_description\n"
            "print(json.dumps([p for p in json.loads(sys.argv[1])\n"
            "                  if p[1] not in d.get(p[0], {}).get('options', {})]))")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(pairs)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --- MLflow server ---------------------------------------------------------------------------------

def test_mlflow_server_manifest() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((INFRA / "mlflow" / "mlflow.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"].startswith(IMAGE_REPO + ":")
    assert container["command"] == ["mlflow", "server"]
    args = dict(a.split("=", 1) if "=" in a else (a, None) for a in container["args"])
    assert args["--backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"  # from the secret
    assert args["--artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in args
    # The options exist in the pinned MLflow.
    help_text = subprocess.run([str(Path(sys.executable).with_name("mlflow")), "server", "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    for flag in args:
        assert flag in help_text, flag
    port = container["ports"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    svc_port = docs["Service"]["spec"]["ports"][0]
    assert svc_port["targetPort"] == port["name"]
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


# --- Feast with Redis ------------------------------------------------------------------------------

FEAST_ENV = {
    "RISKLOOP_FEAST_REGISTRY_URL": "postgresql+psycopg://feast:pw@db:5432/riskloop_feast",
    "RISKLOOP_FEAST_PG_HOST": "db",
    "RISKLOOP_FEAST_PG_PORT": "5432",
    "RISKLOOP_FEAST_PG_USER": "feast",
    "RISKLOOP_FEAST_PG_PASSWORD": "pw",
    "RISKLOOP_FEAST_OFFLINE_DB": "riskloop",
    "RISKLOOP_FEAST_ONLINE_DB": "riskloop_feast",
}


def test_feast_redis_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from feast.repo_config import load_repo_config

    for k, v in {**FEAST_ENV, "RISKLOOP_FEAST_REDIS": "redis.internal:6379,password=s,ssl=true"}.items():
        monkeypatch.setenv(k, v)
    config = load_repo_config(tmp_path, INFRA / "feast" / "feature_store.yaml")
    assert config.project == "riskloop"  # the same project as feature_repo/: same registry objects
    assert type(config.online_store).__name__ == "RedisOnlineStoreConfig"
    assert config.online_store.connection_string == "redis.internal:6379,password=s,ssl=true"
    assert config.offline_store.type == "postgres" and config.offline_store.host == "db"
    dev = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text())
    prod = yaml.safe_load((INFRA / "feast" / "feature_store.yaml").read_text())
    assert prod["registry"] == dev["registry"]
    assert prod["entity_key_serialization_version"] == dev["entity_key_serialization_version"]


@pytest.fixture()
def redis_server(tmp_path: Path):
    """A throwaway redis-server on a free loopback port (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not on PATH (Debian: apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def online_round_trip(online_store: dict, tmp_path: Path) -> dict:
    """Write two customers' features to ``online_store`` through Feast and read them back.

    The registry and offline store are local files: what is under test is the online store config.
    """
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64, String

    now = datetime.now(timezone.utc).replace(microsecond=0)
    rows = pd.DataFrame({"customer_id": ["c1", "c2"], "event_timestamp": [now - timedelta(hours=1)] * 2,
                         "customer_nb_tx_1d": [3, 7], "customer_avg_amount_1d": [12.5, 80.0]})
    rows.to_parquet(tmp_path / "spending.parquet")
    config = RepoConfig(project="riskloop_redis_test", provider="local",
                        registry={"registry_type": "file", "path": str(tmp_path / "registry.db")},
                        offline_store={"type": "file"}, online_store=online_store,
                        entity_key_serialization_version=3, repo_path=tmp_path)
    store = FeatureStore(config=config)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    view = FeatureView(name="customer_spending", entities=[customer], ttl=timedelta(days=30), online=True,
                       schema=[Field(name="customer_id", dtype=String),
                               Field(name="customer_nb_tx_1d", dtype=Int64),
                               Field(name="customer_avg_amount_1d", dtype=Float64)],
                       source=FileSource(path=str(tmp_path / "spending.parquet"),
                                         timestamp_field="event_timestamp"))
    store.apply([customer, view])
    store.write_to_online_store("customer_spending", rows)
    return store.get_online_features(
        features=["customer_spending:customer_nb_tx_1d", "customer_spending:customer_avg_amount_1d"],
        entity_rows=[{"customer_id": "c2"}, {"customer_id": "c1"}, {"customer_id": "unknown"}],
    ).to_dict()


def test_feast_redis_online_store_round_trip(redis_server: str, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from feast.repo_config import load_repo_config

    for k, v in {**FEAST_ENV, "RISKLOOP_FEAST_REDIS": redis_server}.items():
        monkeypatch.setenv(k, v)
    # The online store exactly as infra/feast/feature_store.yaml configures it.
    online = load_repo_config(tmp_path, INFRA / "feast" / "feature_store.yaml").online_store
    out = online_round_trip(online.model_dump(mode="json"), tmp_path)
    assert out["customer_id"] == ["c2", "c1", "unknown"]
    assert out["customer_nb_tx_1d"] == [7, 3, None]
    assert out["customer_avg_amount_1d"] == [80.0, 12.5, None]
    import redis

    host, port = redis_server.split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() >= 2  # the rows live in Redis
