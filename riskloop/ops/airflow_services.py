"""A real Airflow 3 on the stack: api-server, scheduler, dag-processor and triggerer with the
LocalExecutor, on the stack's ``riskloop_airflow`` metadata database.

``riskloop.ops.orchestrate.run_dag`` proves the tasks with ``dag.test()``; these services prove the
platform: schedules, asset-triggered runs and retries without a person. Each service is a
detached process group under ``<home>`` (pid in ``run/airflow-<service>.pid``, output in
``logs/airflow-<service>.log``), started and stopped with the same helpers as the MLflow server.

Credentials: Airflow 3's default auth manager is the *simple auth manager*. Its users come from
``[core] simple_auth_manager_users`` and their passwords from a JSON file
(``[core] simple_auth_manager_passwords_file``) that Airflow only fills for users it does not find
there. riskloop writes that file itself from ``RISKLOOP_AIRFLOW_ADMIN_USER``/``..._PASSWORD``; a
password is generated (once, kept in the file, mode 0600) only in local mode, i.e. on the
embedded Postgres. Against a configured Postgres a missing password is an error.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from riskloop.core.config import Settings
from riskloop.ops import processes
from riskloop.ops.orchestrate import airflow_env, ensure_airflow_db

log = logging.getLogger(__name__)

# Start order matters only for readiness: the api-server serves the execution API that task
# processes talk to, the dag-processor must serialise DAGs before the scheduler can run them.
SERVICES = ("api-server", "dag-processor", "scheduler", "triggerer")


class AirflowConfigError(RuntimeError):
    """Airflow cannot be started safely with this configuration (e.g. no admin password)."""


def pidname(service: str) -> str:
    return f"airflow-{service}"


def passwords_file(settings: Settings) -> Path:
    return settings.airflow_home / "passwords.json"


def admin_password(settings: Settings) -> str:
    """The admin password: configured, else (local mode only) generated once and reused."""
    if settings.airflow_admin_password is not None:
        return settings.airflow_admin_password.get_secret_value()
    path = passwords_file(settings)
    try:
        stored = json.loads(path.read_text()).get(settings.airflow_admin_user)
    except (OSError, ValueError):
        stored = None
    if stored:
        return stored
    if not settings.embedded:
        raise AirflowConfigError(
            "RISKLOOP_AIRFLOW_ADMIN_PASSWORD must be set when Airflow runs on a configured "
            "Postgres (RISKLOOP_DATABASE_URL); riskloop generates passwords only in local mode")
    return secrets.token_urlsafe(18)


def _write_passwords(settings: Settings) -> Path:
    """Write the simple auth manager's password file (owner-only) before any service reads it."""
    path = passwords_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({settings.airflow_admin_user: admin_password(settings)}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)
    path.chmod(0o600)
    return path


def services_env(settings: Settings) -> dict[str, str]:
    """``orchestrate.airflow_env`` plus what long-running services need.

    Worker counts are 1 and parallelism small on purpose: riskloop's tasks are few and heavy, and
    the machine is often a shared 2-core one. DAGs stay paused at creation (Airflow's default), so
    starting the services never starts the pipeline by surprise; unpause in the UI or the API.
    """
    env = airflow_env(settings)
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API__BASE_URL": settings.airflow_url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__TRIGGERER__CAPACITY": "50",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
    })
    return env


def health(settings: Settings, timeout: float = 2.0) -> dict[str, Any] | None:
    """``GET /api/v2/monitor/health`` (no auth needed): metadatabase and each component's heartbeat."""
    import httpx

    try:
        r = httpx.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=timeout)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def healthy(settings: Settings, timeout: float = 2.0) -> bool:
    """Every component reports healthy: api-server answers, scheduler/triggerer/dag-processor beat."""
    h = health(settings, timeout)
    if not h:
        return False
    parts = [h.get("metadatabase"), h.get("scheduler"), h.get("triggerer"), h.get("dag_processor")]
    return all(p and p.get("status") == "healthy" for p in parts)


def running(settings: Settings) -> dict[str, bool]:
    return {s: processes._read_pid(processes._pidfile(settings, pidname(s))) is not None for s in SERVICES}


def start(settings: Settings, wait_s: float = 300.0) -> dict[str, Any]:
    """Migrate the metadata DB, then start whichever services are not running; wait until healthy."""
    ensure_airflow_db(settings)
    _write_passwords(settings)
    env = services_env(settings)
    airflow = str(Path(sys.executable).with_name("airflow"))
    cmds = {
        "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(settings.airflow_port),
                       "--workers", "1"],
        "dag-processor": [airflow, "dag-processor"],
        "scheduler": [airflow, "scheduler"],
        "triggerer": [airflow, "triggerer"],
    }
    procs = {}
    for service, alive in running(settings).items():
        if alive:
            continue
        log.info("starting airflow %s", service)
        procs[service] = processes.spawn_detached(settings, pidname(service), cmds[service], env)
    processes.wait_until(settings, {pidname(s): p for s, p in procs.items()}, lambda: healthy(settings), wait_s)
    log.info("Airflow UI on %s (user %s, password in %s)", settings.airflow_url,
             settings.airflow_admin_user, passwords_file(settings))
    return status(settings, known_healthy=True)


def stop(settings: Settings) -> list[str]:
    """SIGTERM each service's process group (LocalExecutor workers and task processes included)."""
    # The scheduler first: it stops handing out work while the api-server still answers its workers.
    order = ("scheduler", "triggerer", "dag-processor", "api-server")
    return [s for s in order if processes.stop_process(settings, pidname(s), timeout=30.0)]


def status(settings: Settings, *, known_healthy: bool = False) -> dict[str, Any]:
    """``known_healthy``: the caller has just seen every component healthy (:func:`start`'s wait),
    so a second health call, which a busy machine can answer late, does not turn "up" into
    "starting" (a flaky CI run asserted on exactly that)."""
    alive = running(settings)
    up = known_healthy or healthy(settings, timeout=1.0)
    return {
        "airflow_url": settings.airflow_url,
        "airflow": "up" if up else ("starting" if any(alive.values()) else "down"),
        "airflow_services": {s: "running" if a else "stopped" for s, a in alive.items()},
    }


# --- REST API (v2) ---------------------------------------------------------------------------

def api_client(settings: Settings, timeout: float = 10.0):
    """An ``httpx.Client`` on the api-server, logged in as the admin (simple auth manager JWT)."""
    import httpx

    r = httpx.post(f"{settings.airflow_url}/auth/token", timeout=timeout,
                   json={"username": settings.airflow_admin_user, "password": admin_password(settings)})
    r.raise_for_status()
    token = r.json()["access_token"]
    return httpx.Client(base_url=f"{settings.airflow_url}/api/v2", timeout=timeout,
                        headers={"Authorization": f"Bearer {token}"})


def trigger_dag(settings: Settings, dag_id: str, conf: dict[str, Any] | None = None,
                unpause: bool = True) -> str:
    """Create a manual DAG run through the REST API and return its run id.

    The DAG is unpaused first (it is paused at creation): the scheduler does not queue runs of a
    paused DAG, even manual ones."""
    with api_client(settings) as api:
        if unpause:
            api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        r = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        r.raise_for_status()
        return r.json()["dag_run_id"]


def wait_dag_run(settings: Settings, dag_id: str, run_id: str, timeout_s: float = 300.0) -> str:
    """Poll a DAG run until it ends; return its final state (``success`` or ``failed``)."""
    def check(api):
        state = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()["state"]
        return state if state in ("success", "failed") else None

    return _poll(settings, check, timeout_s, f"{dag_id} run {run_id} did not finish")


def set_paused(settings: Settings, dag_id: str, paused: bool) -> None:
    """Pause or unpause a DAG (a paused DAG gets no new runs, scheduled, asset-triggered or manual)."""
    with api_client(settings) as api:
        api.patch(f"/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()


def create_backfill(settings: Settings, dag_id: str, from_date: datetime, to_date: datetime, *,
                    reprocess: str = "none", max_active_runs: int = 1, run_backwards: bool = False,
                    conf: dict[str, Any] | None = None) -> int:
    """Ask the scheduler to backfill ``dag_id`` for the logical dates in ``[from_date, to_date]``.

    Airflow 3 backfills are run by the scheduler itself (one run per interval, ``run_type``
    ``backfill``), so they get the same executor, retries and alerts as scheduled runs.
    ``reprocess`` says what happens to intervals that already have a run: ``none`` skips them,
    ``failed`` re-runs failed ones, ``completed`` re-runs them all. Returns the backfill's id.
    """
    body = {"dag_id": dag_id, "from_date": from_date.isoformat(), "to_date": to_date.isoformat(),
            "reprocess_behavior": reprocess, "max_active_runs": max_active_runs,
            "run_backwards": run_backwards, "dag_run_conf": conf or {}}
    with api_client(settings) as api:
        r = api.post("/backfills", json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"backfill of {dag_id} refused ({r.status_code}): {r.text[:500]}")
        backfill_id = int(r.json()["id"])
    log.info("backfill %d of %s from %s to %s created", backfill_id, dag_id, from_date, to_date)
    return backfill_id


def _list_runs(api, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"order_by": "logical_date", "limit": 100}
    if run_type:
        params["run_type"] = run_type
    return api.get(f"/dags/{dag_id}/dagRuns", params=params).raise_for_status().json()["dag_runs"]


def dag_runs(settings: Settings, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
    """The DAG's runs (oldest logical date first), optionally of one ``run_type``."""
    with api_client(settings) as api:
        return _list_runs(api, dag_id, run_type)


def _poll(settings: Settings, check, timeout_s: float, what: str):
    """Call ``check(api)`` every 2 s until it returns a value; one login, and a slow or
    briefly unreachable api-server (a busy machine) is waited for, not treated as an answer."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    with api_client(settings, timeout=30.0) as api:
        while True:
            try:
                result = check(api)
            except httpx.TransportError as exc:
                log.warning("api-server did not answer (%s); retrying", exc)
                result = None
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {timeout_s:.0f}s")
            time.sleep(2.0)


def wait_backfill(settings: Settings, backfill_id: int, timeout_s: float = 900.0) -> dict[str, str]:
    """Wait until the scheduler has finished a backfill; return ``{logical date: run state}`` of its runs."""
    def check(api):
        info = api.get(f"/backfills/{backfill_id}").raise_for_status().json()
        if not info["completed_at"]:
            return None
        lo, hi = datetime.fromisoformat(info["from_date"]), datetime.fromisoformat(info["to_date"])
        return {r["logical_date"]: r["state"] for r in _list_runs(api, info["dag_id"], "backfill")
                if lo <= datetime.fromisoformat(r["logical_date"]) <= hi}

    return _poll(settings, check, timeout_s, f"backfill {backfill_id} did not complete")


def wait_dag_runs(settings: Settings, dag_id: str, count: int, run_type: str | None = None,
                  timeout_s: float = 900.0) -> list[dict[str, Any]]:
    """Wait until ``dag_id`` has ``count`` successful runs (of ``run_type``); fail fast on a failed one."""
    def check(api):
        runs = _list_runs(api, dag_id, run_type)
        failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
        if failed:
            raise RuntimeError(f"{dag_id}: run(s) failed: {failed}")
        done = [r for r in runs if r["state"] == "success"]
        return done if len(done) >= count else None

    return _poll(settings, check, timeout_s, f"{dag_id}: fewer than {count} successful runs")
