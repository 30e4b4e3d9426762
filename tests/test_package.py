"""The installed wheel works outside the checkout: it finds the dbt project, feature repo, DAGs and
expectation suites it ships, Airflow parses its DAGs and dbt parses its project from there.

The wheel is built from this checkout and installed (without dependencies) into a fresh virtual
environment in a temporary directory; the dependencies come from the test's own environment
through a ``.pth`` line, which does not process that environment's editable install of riskloop,
so every ``riskloop`` import in the child resolves to the wheel's copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from riskloop.core.config import PROJECT_ROOT

CHILD = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    import riskloop
    from riskloop.core.config import PROJECT_ROOT, WORK_ROOT, Settings
    from riskloop.data.transform import run_dbt

    settings = Settings()
    out = {"package": riskloop.__file__, "project_root": str(PROJECT_ROOT), "work_root": str(WORK_ROOT),
           "dags_folder": str(settings.dags_folder), "dbt_project_dir": str(settings.dbt_project_dir),
           "feature_repo": str(settings.feature_repo),
           "suites": sorted(p.name for p in (PROJECT_ROOT / "expectations").glob("*.json"))}

    # Airflow parses the shipped DAGs with no database (the URL names a file that is never created).
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "sqlite:///" + sys.argv[1]
    os.environ["AIRFLOW_HOME"] = str(settings.home / "airflow")
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(settings.dags_folder), include_examples=False)
    out["dag_errors"] = {k: str(v) for k, v in bag.import_errors.items()}
    out["dags"] = sorted(bag.dags)

    # dbt parses the shipped project (no connection: parse only), writing under the home.
    result = run_dbt(settings, ["parse"])
    out["dbt_models"] = sorted(n.name for n in result.nodes.values() if n.resource_type == "model")
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_installed_wheel_parses_its_dags_and_dbt_project_outside_the_checkout(tmp_path: Path) -> None:
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(dist)], cwd=PROJECT_ROOT,
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("riskloop-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "riskloop_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKLOOP_", "AIRFLOW", "PYTHON"))}
    never = tmp_path / "never-created.db"
    proc = subprocess.run([str(python), "-c", CHILD, str(never)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    project = site / "riskloop" / "project"
    assert Path(out["package"]).is_relative_to(site), out["package"]  # the wheel's copy, not the checkout's
    assert Path(out["project_root"]) == project and Path(out["work_root"]) == work
    assert Path(out["dags_folder"]) == project / "dags" and Path(out["dbt_project_dir"]) == project / "dbt_project"
    assert Path(out["feature_repo"]) == project / "feature_repo"
    assert out["suites"] == sorted(p.name for p in (PROJECT_ROOT / "expectations").glob("*.json"))
    assert out["dag_errors"] == {}
    assert out["dags"] == sorted(p.stem for p in (PROJECT_ROOT / "dags").glob("riskloop_*.py"))
    assert {"stg_webhook_events", "int_payments", "fct_transactions", "card_realtime_windows"} <= set(out["dbt_models"])
    assert not never.exists()
    assert not (project / "dbt_project" / "target").exists()  # dbt wrote under the home, not the package
