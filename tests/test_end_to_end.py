"""The whole loop through the real stack, twice, as `make demo` runs it (marked slow).

Its own RISKLOOP_HOME and ports: a fresh embedded Postgres and MLflow server, the real Airflow
task runner (dag.test), dbt, GX, Feast, XGBoost, the HTTP scoring server and Evidently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from riskloop.core.config import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.slow

STAGES = ["stack", "simulate", "ingest_and_train", "serve_and_score", "monitor_and_promote", "audit_pan"]


@pytest.fixture(scope="module")
def e2e_env() -> Iterator[dict[str, str]]:
    home = Path(tempfile.mkdtemp(prefix="riskloop-e2e-"))
    home.chmod(0o755)
    env = {**os.environ, "RISKLOOP_HOME": str(home), "RISKLOOP_PG_PORT": str(free_port()),
           "RISKLOOP_MLFLOW_PORT": str(free_port()), "RISKLOOP_STREAM_SERVICE": "true"}
    env.pop("RISKLOOP_DATABASE_URL", None)
    env.pop("RISKLOOP_MLFLOW_TRACKING_URI", None)
    try:
        yield env
    finally:
        subprocess.run([sys.executable, "-m", "riskloop", "down"], env=env, check=False, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def _demo(env: dict[str, str], summary: Path, n_requests: int) -> dict:
    cmd = [sys.executable, "-m", "riskloop", "demo", "--days", "30", "--customers", "1500", "--seed", "7",
           "--requests", str(n_requests), "--port", str(free_port()), "--summary", str(summary)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return json.loads(summary.read_text())


def test_demo_runs_the_whole_loop_twice(e2e_env: dict[str, str], tmp_path: Path) -> None:
    first = _demo(e2e_env, tmp_path / "first.json", n_requests=60)

    assert list(first["stages"]) == STAGES
    assert all(s["status"] == "ok" for s in first["stages"].values()), first["stages"]
    for key in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert 0.0 <= first["fraud"][key] <= 1.0
    assert first["fraud"]["auc_roc"] > 0.6, "the fraud model should beat chance on simulated fraud"
    # the summary says which weeks the model trained and was tested on: the split's whole UTC days
    assert first["fraud"]["train_window"][1] < first["fraud"]["test_window"][0]
    assert set(first["dag_runs"]) == {"riskloop_ingest", "riskloop_train", "riskloop_monitor", "riskloop_promote"}
    assert 0.5 < first["credit"]["auc_roc"] <= 1.0 and 0.0 <= first["credit"]["brier"] < 0.25
    assert first["scoring"]["n"] == 60 and first["scoring"]["errors"] == 0
    assert first["scoring"]["p50_ms"] > 0 and first["scoring"]["p99_ms"] >= first["scoring"]["p50_ms"]
    fraud_model = first["models"]["riskloop-fraud"]
    assert fraud_model["versions"] == [1]
    assert fraud_model["aliases"] == {"champion": "1", "challenger": "1"}
    assert first["models"]["riskloop-credit"]["aliases"]["champion"] == "1"
    assert first["drift"]["verdict"] in {"ok", "warning", "critical", "insufficient_data"}
    assert first["promotion"]["decision"] == "no_change"

    # What the summary says was scored is what the append-only decision log holds. (`riskloop status`
    # prints the URL with its password redacted; the password is the home's, under secrets/.)
    server = json.loads(subprocess.run([sys.executable, "-m", "riskloop", "status", "--json"], env=e2e_env,
                                       capture_output=True, text=True, check=True).stdout)
    assert "***" in server["database_url"]
    stack = Settings(home=Path(e2e_env["RISKLOOP_HOME"]), pg_port=int(e2e_env["RISKLOOP_PG_PORT"]))
    with psycopg.connect(stack.pg.url(stack.warehouse_db, driver="")) as conn:
        logged = conn.execute("select count(*), count(distinct model_version) from serving.decision_log").fetchone()
    assert logged == (60, 1)
    # the real-time loop in the running platform: webhooks to `riskloop serve`, the stream consumer
    # `riskloop up` manages, the windows read back from the Feast online store equal what was sent
    realtime = first["realtime"]
    assert realtime["webhooks_accepted"] == 6 and realtime["online_equals_expected"] is True, realtime
    assert realtime["online"]["card"]["card_tx_count_10m"] == 6
    assert server["stream"] == "up" and server["stream_events"] >= 6, server
    # card numbers went in (webhook archive, score requests) and only tokens came out
    assert first["pan_audit"]["clean"] and first["pan_audit"]["hits"] == 0
    assert first["pan_audit"]["tables_scanned"] > 5 and first["pan_audit"]["files_scanned"] > 0
    with psycopg.connect(stack.pg.url(stack.warehouse_db, driver="")) as conn:
        tokenised = conn.execute("select count(*) from serving.decision_log where request ? 'pan_token'").fetchone()
    assert 0 < tokenised[0] < 60

    second = _demo(e2e_env, tmp_path / "second.json", n_requests=60)
    assert all(s["status"] == "ok" for s in second["stages"].values()), second["stages"]
    fraud_model = second["models"]["riskloop-fraud"]
    assert fraud_model["versions"] == [1, 2]
    assert fraud_model["aliases"]["challenger"] == "2"
    decision = second["promotion"]
    assert decision["decision"] in {"promoted", "refused"}
    assert decision["challenger_version"] == "2" and decision["reason"]
    assert fraud_model["aliases"]["champion"] == ("2" if decision["decision"] == "promoted" else "1")
