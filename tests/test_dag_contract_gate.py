"""A seeded bad batch fails the contract task of the real ingest DAG (dag.test) and nothing
downstream runs: dbt never builds the marts, Feast never materialises."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from riskloop import db
from riskloop.config import AIRFLOW_DB
from riskloop.orchestrate import DagRunFailed, run_dag
from tests.fixtures_data import make_tables, reset_warehouse, write_landing


def _task_states(settings, dag_id: str, logical_date: datetime) -> dict[str, str]:
    """task id → state; a mapped task's instances appear as ``task[label]`` (its rendered map index)."""
    with psycopg.connect(settings.pg.url(AIRFLOW_DB, driver="")) as conn:
        rows = conn.execute(
            "select ti.task_id, ti.map_index, ti.rendered_map_index, ti.state from task_instance ti "
            "join dag_run dr on dr.dag_id = ti.dag_id and dr.run_id = ti.run_id "
            "where dr.dag_id = %s and dr.logical_date = %s", (dag_id, logical_date)).fetchall()
    return {(task if index < 0 else f"{task}[{label}]"): state for task, index, label, state in rows}


def test_bad_batch_stops_the_dag_before_dbt(settings, tmp_path: Path) -> None:
    reset_warehouse(settings)
    tables = make_tables()
    ledger = tables["ledger_entries"].copy()
    ledger.loc[0, "amount_minor"] += 1  # one journal no longer sums to zero
    tables["ledger_entries"] = ledger
    landing = write_landing(tables, tmp_path / "landing")
    logical = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    with pytest.raises(DagRunFailed) as info:
        run_dag(settings, "riskloop_ingest", logical_date=logical, conf={"landing_dir": str(landing)})
    assert "ledger_entries" in str(info.value)

    states = _task_states(settings, "riskloop_ingest", logical)
    # One load per landed source (mapped, labelled by source), all loaded before the contracts ran.
    assert states["landed"] == "success"
    assert {k: v for k, v in states.items() if k.startswith("load_raw")} == {
        f"load_raw[{name}]": "success" for name in sorted(tables)}
    assert states["check_contracts"] == "failed"
    assert states["transform"] == "upstream_failed"
    assert states["check_feature_marts"] == "upstream_failed"
    assert states["materialize"] == "upstream_failed"
    with db.connect(settings) as conn:
        marts = conn.execute("select count(*) from information_schema.schemata where schema_name = 'marts'").fetchone()
        loaded = conn.execute("select count(*) from raw.ledger_entries").fetchone()
        quarantined = conn.execute("select journal_id, _expectations from quarantine.ledger_entries").fetchall()
    assert marts == (0,), "dbt must not have run"
    # the unbalanced journal's two lines moved to quarantine (not lost), the good rows stay in raw,
    # and the landed file is untouched
    assert loaded[0] == len(ledger) - 2 and len(quarantined) == 2
    assert {q[0] for q in quarantined} == {ledger.loc[0, "journal_id"]}
    assert len(pd.read_parquet(landing / "ledger_entries.parquet")) == len(ledger)
