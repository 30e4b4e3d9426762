"""DAG integrity: every DAG parses without import errors, cheaply, with tags, owner and retries."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from riskloop.core.config import PROJECT_ROOT, Settings
from riskloop.ops.orchestrate import airflow_env

EXPECTED_DAGS = {"riskloop_ingest", "riskloop_train", "riskloop_monitor", "riskloop_promote", "riskloop_batch_files",
                 "riskloop_retention"}

PARSE = textwrap.dedent("""
    import json, os, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
    heavy = sorted(m for m in ("feast", "mlflow", "xgboost", "great_expectations", "evidently", "dbt")
                   if m in sys.modules)
    def schedule_assets(d):
        cond = getattr(d.timetable, "asset_condition", None)
        return sorted(a.name for a in getattr(cond, "objects", []))
    out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "heavy_imports": heavy,
           "seconds": time.perf_counter() - t0,
           "dags": {d.dag_id: {"tags": sorted(d.tags), "doc_md": bool(d.doc_md),
                                "on_failure": bool(d.on_failure_callback),
                                "timetable": type(d.timetable).__name__,
                                "schedule_assets": schedule_assets(d),
                                "tasks": {t.task_id: {"retries": t.retries, "owner": t.owner,
                                                      "timeout": bool(t.execution_timeout),
                                                      "on_failure": bool(t.on_failure_callback),
                                                      "outlets": sorted(o.name for o in t.outlets),
                                                      "mapped": bool(getattr(t, "is_mapped", False)),
                                                      "downstream": sorted(t.downstream_task_ids)}
                                          for t in d.tasks}}
                    for d in bag.dags.values()}}
    def conf_error(dag_id, conf):
        # What Airflow says of a trigger conf (None: accepted), checked by the DAG's own params.
        params = bag.dags[dag_id].params
        try:
            for k, v in conf.items():
                params.get_param(k).resolve(value=v)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
    out["database_touched"] = os.path.exists(sys.argv[3])
    out["conf_checks"] = {name: conf_error(dag_id, conf) for name, (dag_id, conf) in json.loads(sys.argv[2]).items()}
    print(json.dumps(out))
""")


# Trigger confs checked against the DAGs' params in the parsing process (name → (dag, conf)).
CONF_CHECKS = {
    "train_window": ("riskloop_train", {"fraud_window": {"train_days": 14, "test_days": 7, "delay_days": None}}),
    "train_window_unknown_key": ("riskloop_train", {"fraud_window": {"train_weeks": 2}}),
    "train_window_negative": ("riskloop_train", {"fraud_window": {"delay_days": -1}}),
    "promote_margin": ("riskloop_promote", {"margin": 0.01, "report_id": None}),
    "promote_negative_margin": ("riskloop_promote", {"margin": -0.1}),
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow-parse")
    settings = Settings(home=home)
    env = airflow_env(settings)
    # Parsing must not need a database: point Airflow at one that does not exist.
    never = home / "never-created.db"
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{never}"
    proc = subprocess.run([sys.executable, "-c", PARSE, str(PROJECT_ROOT / "dags"), json.dumps(CONF_CHECKS),
                           str(never)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_import_errors(dagbag: dict) -> None:
    assert dagbag["errors"] == {}
    assert EXPECTED_DAGS <= set(dagbag["dags"])


def test_parsing_imports_nothing_heavy_and_touches_no_database(dagbag: dict) -> None:
    """What would make parsing slow, checked directly rather than by a wall-clock bound (which a
    busy CI machine breaks): heavy libraries imported, or a database opened at parse time. The
    parse is still timed, and the figure printed (`pytest -s`) for BENCHMARKS.md."""
    print(f"DagBag parse of {len(dagbag['dags'])} DAGs: {dagbag['seconds']:.2f}s")
    assert dagbag["heavy_imports"] == []
    assert dagbag["database_touched"] is False


def test_every_dag_has_tags_doc_owner_retries_and_timeouts(dagbag: dict) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert "riskloop" in dag["tags"], dag_id
        assert dag["doc_md"], dag_id
        for task_id, t in dag["tasks"].items():
            assert t["retries"] >= 1, (dag_id, task_id)
            assert t["owner"] and t["owner"] != "airflow", (dag_id, task_id)
            assert t["timeout"], (dag_id, task_id)


def test_every_dag_and_task_alerts_on_failure(dagbag: dict) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert dag["on_failure"], dag_id
        for task_id, t in dag["tasks"].items():
            assert t["on_failure"], (dag_id, task_id)


def test_dags_are_chained_by_assets(dagbag: dict) -> None:
    """ingest → (online features) → train → (fraud model) → monitor → (drift checked) → promote:
    data-aware, no sensors."""
    dags = dagbag["dags"]
    assert dags["riskloop_ingest"]["tasks"]["materialize"]["outlets"] == ["riskloop_online_features"]
    assert dags["riskloop_train"]["timetable"] == "AssetTriggeredTimetable"
    assert dags["riskloop_train"]["schedule_assets"] == ["riskloop_online_features"]
    assert dags["riskloop_train"]["tasks"]["train_fraud"]["outlets"] == ["riskloop_fraud_model"]
    assert dags["riskloop_train"]["tasks"]["train_credit"]["outlets"] == ["riskloop_credit_model"]
    # Ingest runs cover whole days (a data-interval timetable): what backfills rely on.
    assert dags["riskloop_ingest"]["timetable"] == "CronDataIntervalTimetable"
    # The monitor also runs daily: drift grows without any new model.
    assert dags["riskloop_monitor"]["timetable"] == "AssetOrTimeSchedule"
    assert dags["riskloop_monitor"]["schedule_assets"] == ["riskloop_fraud_model"]
    assert dags["riskloop_monitor"]["tasks"]["drift"]["outlets"] == ["riskloop_drift_checked"]
    assert "promote" not in dags["riskloop_monitor"]["tasks"]  # promotion is its own DAG
    assert dags["riskloop_promote"]["timetable"] == "AssetTriggeredTimetable"
    assert dags["riskloop_promote"]["schedule_assets"] == ["riskloop_drift_checked"]


def test_ingest_is_mapped_per_source(dagbag: dict) -> None:
    """One load task instance per landed source, mapped at run time over what has landed."""
    tasks = dagbag["dags"]["riskloop_ingest"]["tasks"]
    assert tasks["load_raw"]["mapped"] is True
    assert tasks["landed"]["mapped"] is False
    assert tasks["load_raw"]["downstream"] == ["check_contracts"]
    # the batch files' DAG checks its tables' contracts after loading, before it announces them
    batch = dagbag["dags"]["riskloop_batch_files"]["tasks"]
    assert batch["load_batch_files"]["downstream"] == ["check_contracts"]
    assert batch["check_contracts"]["outlets"] == ["riskloop_batch_files"]
    assert batch["check_contracts"]["downstream"] == ["sync_cases"]


def test_failure_alert_is_one_structured_record(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from riskloop.core.alerts import task_failed

    ti = SimpleNamespace(dag_id="riskloop_ingest", task_id="transform", run_id="scheduled__x",
                         try_number=3, log_url="http://af/log")
    with caplog.at_level("ERROR", logger="riskloop.alerts"):
        fields = task_failed({"ti": ti, "exception": RuntimeError("dbt build failed")})
    assert fields["dag_id"] == "riskloop_ingest" and fields["task_id"] == "transform"
    assert fields["try_number"] == 3 and fields["error"] == "RuntimeError: dbt build failed"
    record = next(r for r in caplog.records if r.name == "riskloop.alerts")
    assert record.levelname == "ERROR" and json.loads(record.getMessage().split(" ", 2)[2]) == fields
    # A context it cannot read still yields an alert instead of an exception.
    assert task_failed({})["alert"] == "airflow_failure"


def test_dag_files_are_thin() -> None:
    """No riskloop/heavy import at module level: tasks import what they need when they run.

    The exceptions are two light modules: the typed settings (pydantic only, no database; the
    schedule's start, end and catchup are configuration, read where the DAG is declared) and what
    the DAGs share (their assets, schedule start and task defaults;
    Airflow's SDK and the settings only). test_parsing_imports_nothing_heavy checks both."""
    allowed = ("from riskloop.core.config import get_settings", "from riskloop.ops.dag_defaults import ")
    for path in Path(PROJECT_ROOT / "dags").glob("*.py"):
        top_level = [line for line in path.read_text().splitlines()
                     if line.startswith(("import ", "from ")) and not line.startswith(allowed)]
        for line in top_level:
            assert not any(m in line for m in ("riskloop", "training", "feast", "mlflow", "pandas")), (path, line)


def test_trigger_params_are_validated_before_a_run_starts(dagbag: dict) -> None:
    """train takes its model window as params; a conf the schema does not allow is refused up front."""
    checks = dagbag["conf_checks"]
    assert checks["train_window"] is None and checks["promote_margin"] is None
    assert "train_weeks" in checks["train_window_unknown_key"]
    assert checks["train_window_negative"] is not None and "-1" in checks["train_window_negative"]
    assert checks["promote_negative_margin"] is not None
