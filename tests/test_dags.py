"""DAG integrity: every DAG parses without import errors, cheaply, with tags, owner and retries."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from riskloop.config import PROJECT_ROOT, Settings
from riskloop.orchestrate import airflow_env

EXPECTED_DAGS = {"riskloop_ingest", "riskloop_train", "riskloop_monitor"}

PARSE = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
    heavy = sorted(m for m in ("feast", "mlflow", "xgboost", "great_expectations", "evidently", "dbt")
                   if m in sys.modules)
    out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "heavy_imports": heavy,
           "dags": {d.dag_id: {"tags": sorted(d.tags), "doc_md": bool(d.doc_md),
                                "tasks": {t.task_id: {"retries": t.retries, "owner": t.owner,
                                                      "timeout": bool(t.execution_timeout)}
                                          for t in d.tasks}}
                    for d in bag.dags.values()}}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow-parse")
    settings = Settings(home=home)
    env = airflow_env(settings)
    # Parsing must not need a database: point Airflow at one that does not exist.
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/never-created.db"
    proc = subprocess.run([sys.executable, "-c", PARSE, str(PROJECT_ROOT / "dags")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_import_errors(dagbag: dict) -> None:
    assert dagbag["errors"] == {}
    assert EXPECTED_DAGS <= set(dagbag["dags"])


def test_parsing_imports_nothing_heavy(dagbag: dict) -> None:
    assert dagbag["heavy_imports"] == []


def test_every_dag_has_tags_doc_owner_retries_and_timeouts(dagbag: dict) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert "riskloop" in dag["tags"], dag_id
        assert dag["doc_md"], dag_id
        for task_id, t in dag["tasks"].items():
            assert t["retries"] >= 1, (dag_id, task_id)
            assert t["owner"] and t["owner"] != "airflow", (dag_id, task_id)
            assert t["timeout"], (dag_id, task_id)


def test_dag_files_are_thin() -> None:
    """No riskloop/heavy import at module level: tasks import what they need when they run."""
    for path in Path(PROJECT_ROOT / "dags").glob("*.py"):
        top_level = [line for line in path.read_text().splitlines()
                     if line.startswith(("import ", "from "))]
        for line in top_level:
            assert not any(m in line for m in ("riskloop", "training", "feast", "mlflow", "pandas")), (path, line)
