"""A seeded bad batch (a landed file, a processor's batch file) fails the contract task of the
real ingest DAG (dag.test) and nothing downstream runs: dbt never builds the marts, Feast never
materialises."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest

from riskloop.core import db
from riskloop.core.config import AIRFLOW_DB
from riskloop.ops.orchestrate import DagRunFailed, run_dag
from tests.fixtures_data import make_tables, moved_home, reset_warehouse, write_landing


def _task_states(settings, dag_id: str, logical_date: datetime) -> dict[str, str]:
    """task id → state; a mapped task's instances appear as ``task[label]`` (its rendered map index)."""
    with psycopg.connect(settings.pg.url(AIRFLOW_DB, driver="")) as conn:
        rows = conn.execute(
            "select ti.task_id, ti.map_index, ti.rendered_map_index, ti.state from task_instance ti "
            "join dag_run dr on dr.dag_id = ti.dag_id and dr.run_id = ti.run_id "
            "where dr.dag_id = %s and dr.logical_date = %s", (dag_id, logical_date)).fetchall()
    return {(task if index < 0 else f"{task}[{label}]"): state for task, index, label, state in rows}


def _bad_settlement_file(settings, home: Path) -> tuple[str, Any, bytes]:
    """A processor's settlement file that parses but breaks its contract on line 2 (a fee above
    the amount), loaded the real way (object store → raw.settlement_file_rows) and archived."""
    from riskloop.core.objectstore import open_store
    from riskloop.core.schema import SETTLEMENT_FILE_ROWS
    from riskloop.data.batch_files import file_columns, load_batch_files

    local = moved_home(settings, home, batch_url=None)
    rel = "settlements/stripe/2024-03-02.csv"
    data = (",".join(file_columns(SETTLEMENT_FILE_ROWS)) + "\n"
            "stripe,po_1,pay_000001,1137,41,EUR,2024-03-02T06:00:00Z\n"
            "stripe,po_1,pay_000002,1274,1275,EUR,2024-03-02T06:00:00Z\n").encode()
    store = open_store(local)
    store.put(f"incoming/{rel}", data)
    assert load_batch_files(local).to_dict()["inserted"] == 2
    return rel, store, data


def test_bad_batch_stops_the_dag_before_dbt(settings, tmp_path: Path) -> None:
    """A bad landed file and bad batch-file rows (the processors' settlement files) both stop the
    ingest DAG at its contract check: every contract table is checked before dbt."""
    reset_warehouse(settings)
    tables = make_tables()
    ledger = tables["ledger_entries"].copy()
    ledger.loc[0, "amount_minor"] += 1  # one journal no longer sums to zero
    tables["ledger_entries"] = ledger
    landing = write_landing(tables, tmp_path / "landing")
    settlement_file, store, delivered = _bad_settlement_file(settings, tmp_path)
    logical = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    with pytest.raises(DagRunFailed) as info:
        run_dag(settings, "riskloop_ingest", logical_date=logical, conf={"landing_dir": str(landing)})
    assert "ledger_entries" in str(info.value) and "settlement_file_rows" in str(info.value)

    states = _task_states(settings, "riskloop_ingest", logical)
    # One load per landed source (mapped, labelled by source), all loaded before the contracts ran.
    assert states["landed"] == "success"
    assert {k: v for k, v in states.items() if k.startswith("load_raw")} == {
        f"load_raw[{name}]": "success" for name in sorted(tables)}
    assert states["check_contracts"] == "failed"
    assert states["transform"] == "upstream_failed"
    assert states["check_feature_marts"] == "upstream_failed"
    assert states["check_settlements"] == "upstream_failed"
    assert states["materialize"] == "upstream_failed"
    with db.connect(settings) as conn:
        # (the schema itself exists from the start: the database roles' default privileges live on it)
        marts = conn.execute("select count(*) from information_schema.tables where table_schema = 'marts'").fetchone()
        loaded = conn.execute("select count(*) from raw.ledger_entries").fetchone()
        quarantined = conn.execute("select journal_id, _expectations from quarantine.ledger_entries").fetchall()
        settlements = conn.execute("select payment_id from raw.settlement_file_rows").fetchall()
        q_settlements = conn.execute("select source_file, line_no, _expectations "
                                     "from quarantine.settlement_file_rows").fetchall()
    assert marts == (0,), "dbt must not have run"
    with db.connect(settings) as conn:
        owners = dict(conn.execute("select schemaname || '.' || tablename, tableowner from pg_tables "
                                   "where tablename = 'ledger_entries'").fetchall())
    # the tasks log in as their component's role, not the owner: the raw table is the migrations' (the
    # owner's), its quarantine copy was made by the contract task, as riskloop_ingest
    assert owners == {"raw.ledger_entries": "postgres", "quarantine.ledger_entries": "riskloop_ingest"}
    # the unbalanced journal's two lines moved to quarantine (not lost), the good rows stay in raw,
    # and the landed file is untouched
    assert loaded[0] == len(ledger) - 2 and len(quarantined) == 2
    assert {q[0] for q in quarantined} == {ledger.loc[0, "journal_id"]}
    assert len(pd.read_parquet(landing / "ledger_entries.parquet")) == len(ledger)
    # the bad settlement line too: quarantined with what it broke, the good line kept, the file as delivered
    assert settlements == [("pay_000001",)]
    assert q_settlements == [(settlement_file, 2,
                              ["expect_column_pair_values_a_to_be_greater_than_b(amount_minor,fee_minor)"])]
    assert store.get(f"archive/{settlement_file}") == delivered
