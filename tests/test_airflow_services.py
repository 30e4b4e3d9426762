"""A real Airflow 3 on the session stack: the four services start, the scheduler beats, a real DAG
run triggered through the REST API succeeds with the LocalExecutor, and stopping leaves nothing.
"""

from __future__ import annotations

import json
import os
import stat
import time

import psutil
import pytest
from pydantic import SecretStr

from riskloop.core.config import Settings
from riskloop.ops import airflow_services, processes, stack
from tests.conftest import free_port


def test_password_is_generated_only_in_local_mode(tmp_path) -> None:
    local = Settings(home=tmp_path / "local", database_url=None, airflow_admin_password=None)
    path = airflow_services._write_passwords(local)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    generated = json.loads(path.read_text())["admin"]
    assert len(generated) >= 20
    # Generated once, then reused: restarting the services must not change the password.
    airflow_services._write_passwords(local)
    assert json.loads(path.read_text())["admin"] == generated

    remote = Settings(home=tmp_path / "remote", database_url="postgresql://risk:pw@db:5432/riskloop",
                      airflow_admin_password=None)
    with pytest.raises(airflow_services.AirflowConfigError):
        airflow_services.admin_password(remote)
    configured = remote.model_copy(update={"airflow_admin_password": SecretStr("s3cret-from-vault")})
    airflow_services._write_passwords(configured)
    assert json.loads(airflow_services.passwords_file(configured).read_text()) == {"admin": "s3cret-from-vault"}


def test_service_settings_are_real_airflow_options(tmp_path) -> None:
    """Airflow ignores an unknown AIRFLOW__SECTION__KEY silently: check each against its catalogue."""
    import subprocess
    import sys

    env = airflow_services.services_env(Settings(home=tmp_path))
    keys = [k for k in env if k.startswith("AIRFLOW__") and k != "AIRFLOW__CORE__UNIT_TEST_MODE"]
    code = ("import json,sys\nfrom airflow.configuration import conf\nd = conf.configuration_description\n"
            "print(json.dumps([k for k in json.loads(sys.argv[1]) if k.split('__')[2].lower() "
            "not in d.get(k.split('__')[1].lower(), {}).get('options', {})]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(keys)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__API__WORKERS"] == "1" and env["AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES"] == "1"


def _group_members(pgids: set[int]) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) in pgids:
                alive.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return alive


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_airflow_runs_a_dag_and_stops_cleanly(settings: Settings) -> None:
    # Its own UI port: never the default one a developer's `riskloop up --airflow` may hold.
    s = settings.model_copy(update={"airflow_port": free_port()})
    t0 = time.perf_counter()
    try:
        info = airflow_services.start(s, wait_s=300)
        started = time.perf_counter() - t0
        assert info["airflow"] == "up", info
        assert info["airflow_url"] == f"http://127.0.0.1:{s.airflow_port}"
        assert stack.status(s)["airflow_url"] == s.airflow_url

        health = airflow_services.health(s)
        assert health is not None
        assert health["scheduler"]["status"] == "healthy"
        assert health["scheduler"]["latest_scheduler_heartbeat"]
        assert health["dag_processor"]["status"] == "healthy"

        # Credentials come from configuration: a wrong password is refused.
        import httpx

        # a generous timeout: the API server's first answers are slow on a busy 2-core machine (5 s, httpx's
        # default, timed out once in a full run)
        bad = httpx.post(f"{s.airflow_url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=60)
        assert bad.status_code == 401
        assert httpx.get(f"{s.airflow_url}/api/v2/dags", timeout=60).status_code == 401

        # A tiny run of a real DAG: the train DAG with no model selected (each task skips, so no model asset is emitted).
        # The dag-processor may not have serialised the DAGs yet right after start: retry briefly.
        deadline = time.monotonic() + 180
        while True:
            try:
                run_id = airflow_services.trigger_dag(s, "riskloop_train", {"models": []})
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        t1 = time.perf_counter()
        assert airflow_services.wait_dag_run(s, "riskloop_train", run_id, timeout_s=300) == "success"
        ran = time.perf_counter() - t1
        with airflow_services.api_client(s) as api:
            tis = api.get(f"/dags/riskloop_train/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        assert {t["task_id"]: t["state"] for t in tis} == {"train_fraud": "skipped", "train_credit": "skipped"}
    finally:
        pgids = {pid for pid in (processes._read_pid(processes._pidfile(s, airflow_services.pidname(x)))
                                 for x in airflow_services.SERVICES) if pid}
        t2 = time.perf_counter()
        airflow_services.stop(s)
        stopped = time.perf_counter() - t2
    assert _group_members(pgids) == []
    assert airflow_services.status(s)["airflow"] == "down"
    print(f"airflow: start {started:.1f}s, DAG run {ran:.1f}s, stop {stopped:.1f}s")
