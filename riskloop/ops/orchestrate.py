"""Run riskloop's Airflow DAGs with ``dag.test()`` against the stack's Airflow metadata database.

``dag.test()`` (what ``airflow dags test`` runs) executes a DAG run through Airflow's real task
runner (task SDK, XComs, retries, state in the metadata DB) without a scheduler; it runs in a child
process (:mod:`riskloop.ops.dag_runner`) so Airflow's configuration comes only from the environment
built here, never from the caller's.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from riskloop.core.config import AIRFLOW_DB, Settings

log = logging.getLogger(__name__)


class DagRunFailed(RuntimeError):
    """A DAG run ended in failure; the message carries the failing tasks' log tail."""


@dataclass(frozen=True)
class DagRunResult:
    dag_id: str
    logical_date: str
    seconds: float
    log_path: Path


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment of every Airflow process riskloop starts (metadata DB on the stack's Postgres)."""
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(settings.airflow_home),
        # Its own role, owning the metadata database only (riskloop.core.roles).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.service_pg("airflow").url(AIRFLOW_DB, driver="psycopg2"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # The tasks read riskloop's settings from the same variables the caller used.
        "RISKLOOP_HOME": str(settings.home),
        "RISKLOOP_PG_PORT": str(settings.pg_port),
        "RISKLOOP_MLFLOW_PORT": str(settings.mlflow_port),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
    })
    # What the DAG files read at parse time and the tasks at run time, when the caller set it.
    env.update({
        "RISKLOOP_FRAUD_MODEL_NAME": settings.fraud_model_name,
        "RISKLOOP_CREDIT_MODEL_NAME": settings.credit_model_name,
        "RISKLOOP_SCHEDULE_START": settings.schedule_start.isoformat(),
        "RISKLOOP_SCHEDULE_CATCHUP": str(settings.schedule_catchup).lower(),
    })
    if settings.schedule_end:
        env["RISKLOOP_SCHEDULE_END"] = settings.schedule_end.isoformat()
    if settings.landing_dir:
        env["RISKLOOP_LANDING_DIR"] = str(settings.landing_dir)
    if settings.batch_url:
        env["RISKLOOP_BATCH_URL"] = settings.batch_url
    if settings.s3_endpoint_url:
        env["RISKLOOP_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.database_url:
        env["RISKLOOP_DATABASE_URL"] = settings.database_url
    if settings.mlflow_tracking_uri:
        env["RISKLOOP_MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    return env


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def ensure_airflow_db(settings: Settings) -> None:
    """``airflow db migrate`` once per metadata database (a marker file remembers it)."""
    marker = settings.airflow_home / ".migrated"
    # which database as whom, without the password (the file is not a secret)
    target = replace(settings.service_pg("airflow"), password="").url(AIRFLOW_DB, driver="")
    if marker.exists() and marker.read_text() == target:
        return
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log.info("migrating the Airflow metadata database")
    with open(settings.log_dir / "airflow-db-migrate.log", "wb") as out:
        subprocess.run([_airflow_bin(), "db", "migrate"], env=airflow_env(settings), check=True,
                       stdout=out, stderr=subprocess.STDOUT)
    marker.write_text(target)


def run_dag(settings: Settings, dag_id: str, logical_date: datetime | None = None,
            conf: dict | None = None, timeout_s: float = 1800) -> DagRunResult:
    """Run one DAG run with ``dag.test()``; raise :class:`DagRunFailed` if any task fails."""
    return run_dags(settings, [(dag_id, conf)], logical_date=logical_date, timeout_s=timeout_s)[0]


def run_dags(settings: Settings, runs: Sequence[tuple[str, dict | None]], logical_date: datetime | None = None,
             timeout_s: float = 1800) -> list[DagRunResult]:
    """Run ``runs`` (DAG id and conf each) one after another with ``dag.test()`` in one Airflow child
    process (:mod:`riskloop.ops.dag_runner`), so Airflow and the tasks' libraries load once; raise
    :class:`DagRunFailed` at the first run with a failed task (the later ones do not run)."""
    import json

    ensure_airflow_db(settings)
    # dag.test() replaces an earlier run with the same logical date; a fresh timestamp keeps
    # each demo run's history in the metadata DB.
    logical = logical_date or datetime.now(timezone.utc)
    stamp = logical.strftime("%Y%m%dT%H%M%S")
    names = "+".join(dag_id for dag_id, _ in runs)
    log_path = settings.log_dir / f"airflow-{names}-{stamp}.log"
    spec = [{"dag_id": dag_id, "logical_date": logical.isoformat(), "conf": conf} for dag_id, conf in runs]
    log.info("dag.test %s (log: %s)", ", ".join(dag_id for dag_id, _ in runs), log_path)
    t0 = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "riskloop.ops.dag_runner", json.dumps(spec)],
                              env=airflow_env(settings), stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise DagRunFailed(f"DAG {names} failed after {seconds:.0f}s:\n{_failure_excerpt(log_path)}")
    # each run's own time, from the runner's line for it (the process's start-up is the first's)
    own = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"riskloop_dag_run"'):
            done = json.loads(line)
            own[done["riskloop_dag_run"]] = done["seconds"]
    return [DagRunResult(dag_id=dag_id, logical_date=logical.isoformat(), seconds=own.get(dag_id, seconds),
                         log_path=log_path) for dag_id, _ in runs]


def _failure_excerpt(path: Path, limit: int = 4000) -> str:
    """The first task error with its whole traceback down to the exception line (what an engineer
    needs first), plus the log's path; a long traceback keeps its head and its tail."""
    lines = path.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if "Task failed" in line or "[error" in line), None)
    if start is None:
        return "\n".join(lines[-40:])[-limit:] + f"\n(log: {path})"
    # the traceback ends where the next timestamped log record begins
    end = next((j for j in range(start + 1, len(lines)) if _LOG_RECORD.match(lines[j])), len(lines))
    block = lines[max(0, start - 3): end]
    if len(block) > 60:
        block = [*block[:15], f"... ({len(block) - 45} lines) ...", *block[-30:]]
    return clip("\n".join(block), limit) + f"\n(log: {path})"


def clip(text: str, limit: int = 4000) -> str:
    """``text`` cut to about ``limit`` characters: its head (what failed) and its tail (the
    exception), never the middle."""
    return text if len(text) <= limit else text[: limit // 4] + "\n...\n" + text[-(limit - limit // 4):]


_LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
