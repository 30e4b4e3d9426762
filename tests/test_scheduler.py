"""The platform proof: a real Airflow scheduler runs the pipeline without a person, and a backfill
over the same days leaves exactly the same warehouse as the days the scheduler ran one by one.

One Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor) on the session's
temporary Postgres serves both tests, to keep the suite's wall time down. The data is a small
simulation (30 days, few customers): history up to the first interval is loaded up front (what a
first backfill would do), then the scheduler runs the last two daily intervals by itself
(``RISKLOOP_SCHEDULE_START/END`` + catchup), the train DAG follows on the online-features asset.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.core.schema import RAW_SCHEMA, RAW_TABLES
from riskloop.ops import airflow_services
from tests.conftest import free_port
from tests.fixtures_data import reset_warehouse

pytestmark = pytest.mark.slow

SIM_START = "2024-02-01"  # 30 days: 2024-02-01 .. 2024-03-01 (2024 is a leap year)
FIRST, LAST = date(2024, 2, 29), date(2024, 3, 1)  # the two intervals the scheduler runs
CUSTOMERS = 300


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def warehouse_state(settings: Settings) -> dict[str, tuple[int, str]]:
    """Row count and checksum of every raw table (contract columns) and every dbt table (all but
    its lineage columns)."""
    state = {}
    with db.connect(settings) as conn:
        for table in RAW_TABLES:
            state[f"{RAW_SCHEMA}.{table.name}"] = db.table_checksum(conn, f"{RAW_SCHEMA}.{table.name}",
                                                                    list(table.column_names))
        # dbt tables: every column but the lineage ones (*loaded_at: when a load ran, the wall clock).
        built = conn.execute(
            "select c.table_schema || '.' || c.table_name, array_agg(c.column_name::text order by c.ordinal_position) "
            "from information_schema.columns c join information_schema.tables t "
            "  on t.table_schema = c.table_schema and t.table_name = c.table_name "
            "where c.table_schema in ('intermediate', 'marts') and t.table_type = 'BASE TABLE' "
            "  and c.column_name not like '%%loaded_at' group by 1 order by 1").fetchall()
        for name, columns in built:
            state[name] = db.table_checksum(conn, name, list(columns))
    return state


def load_history(settings: Settings) -> None:
    """What an initial backfill would leave: raw rows of the days before the scheduled ones."""
    from riskloop.data.ingest import load_landing

    load_landing(settings, settings.landing, interval_end=_utc(FIRST))


@pytest.fixture(scope="module")
def airflow(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from riskloop import simulator

    landing = tmp_path_factory.mktemp("sched-landing")
    landing.chmod(0o755)
    simulator.write(simulator.simulate(days=30, customers=CUSTOMERS, seed=11, start_date=SIM_START), landing)
    suffix = uuid.uuid4().hex[:6]  # the session's registry is shared: models of our own
    s = Settings().model_copy(update={
        "airflow_port": free_port(), "landing_dir": Path(landing),
        "fraud_model_name": f"sched-fraud-{suffix}", "credit_model_name": f"sched-credit-{suffix}",
        "schedule_start": FIRST, "schedule_end": LAST, "schedule_catchup": True,
    })
    reset_warehouse(s)
    load_history(s)
    try:
        airflow_services.start(s, wait_s=300)
        yield s
    finally:
        airflow_services.stop(s)


def _unpause_when_parsed(s: Settings, dag_id: str, timeout_s: float = 180) -> None:
    """The dag-processor may not have serialised the DAG yet right after start: retry briefly."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            airflow_services.set_paused(s, dag_id, False)
            return
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def scheduled(airflow: Settings) -> dict:
    """Unpause ingest and train; the scheduler runs the two intervals and training follows."""
    s = airflow
    t0 = time.perf_counter()
    _unpause_when_parsed(s, "riskloop_train")
    _unpause_when_parsed(s, "riskloop_ingest")
    ingest = airflow_services.wait_dag_runs(s, "riskloop_ingest", 2, run_type="scheduled", timeout_s=900)
    ingest_seconds = time.perf_counter() - t0
    # Each interval's features trigger a training (asset events): wait until all have finished,
    # then pause, so the backfill below neither starts one nor competes with one for the CPU.
    airflow_services.wait_dag_runs(s, "riskloop_train", 1, run_type="asset_triggered", timeout_s=900)
    deadline = time.monotonic() + 900
    while True:
        train = airflow_services.dag_runs(s, "riskloop_train", run_type="asset_triggered")
        assert all(r["state"] != "failed" for r in train), train
        if all(r["state"] == "success" for r in train) or time.monotonic() > deadline:
            break
        time.sleep(2)
    airflow_services.set_paused(s, "riskloop_train", True)
    seconds = time.perf_counter() - t0
    print(f"scheduler: 2 ingest intervals in {ingest_seconds:.0f}s, with the trainings they triggered {seconds:.0f}s")
    return {"ingest": ingest, "train": train, "state": warehouse_state(s), "seconds": seconds}


def test_scheduler_runs_two_intervals_then_training(airflow: Settings, scheduled: dict) -> None:
    s = airflow
    ingest = scheduled["ingest"]
    assert [(r["data_interval_start"][:10], r["data_interval_end"][:10]) for r in ingest] == [
        ("2024-02-29", "2024-03-01"), ("2024-03-01", "2024-03-02")]
    assert all(r["run_type"] == "scheduled" for r in ingest)

    # Task logs are JSON lines, and riskloop's own lines carry the run's ids.
    run_id = ingest[-1]["dag_run_id"]
    task_dir = s.airflow_home / "logs" / "dag_id=riskloop_ingest" / f"run_id={run_id}" / "task_id=load_raw"
    # load_raw is mapped per source: one log directory per map index (map_index=N/attempt=M.log).
    records = [json.loads(line) for path in task_dir.rglob("attempt=*.log")
               for line in path.read_text().splitlines() if line.strip()]
    ours = [r for r in records if r.get("logger") == "riskloop.data.ingest"]
    assert ours and all(r["run_id"] == run_id and r["task_id"] == "load_raw" for r in ours), records[:5]

    # Warehouse: raw holds exactly the landed rows up to the last interval's end; marts built.
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    end = _utc(date(2024, 3, 2))
    state = scheduled["state"]
    for table in RAW_TABLES:
        path = s.landing / table.file_name
        if not path.exists():
            continue
        t = pq.read_table(path, columns=[table.time_column]).column(0)
        expected = pc.sum(pc.less(t, pa.scalar(end, t.type))).as_py() or 0
        assert state[f"raw.{table.name}"][0] == expected, table.name
    assert state["marts.fct_transactions"][0] > 1000
    with db.connect(s) as conn:
        latest = conn.execute("select max(tx_at) from marts.fct_transactions").fetchone()[0]
        loads = conn.execute("select count(*) from raw.load_batches where interval_start = %s",
                             (_utc(LAST),)).fetchone()[0]
    assert _utc(LAST) <= latest < end
    assert loads > 0  # the second interval was loaded by its own run

    # Feast online store: the features of a customer active on the last day are there.
    from riskloop.features.store import feature_store

    with db.connect(s) as conn:
        customer = conn.execute("select customer_id from marts.fct_transactions where tx_at >= %s limit 1",
                                (_utc(LAST),)).fetchone()[0]
    online = feature_store(s).get_online_features(
        features=["customer_spending:customer_nb_tx_30d"],
        entity_rows=[{"customer_id": customer}]).to_dict()
    assert online["customer_nb_tx_30d"][0] is not None and online["customer_nb_tx_30d"][0] >= 1

    # MLflow registry: the asset-triggered training registered both models.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=s.tracking_uri)
    for name in (s.fraud_model_name, s.credit_model_name):
        challenger = client.get_model_version_by_alias(name, "challenger")
        run = client.get_run(challenger.run_id)
        assert run.info.status == "FINISHED"
    assert scheduled["train"] and all(r["state"] == "success" for r in scheduled["train"])


def test_backfill_leaves_the_same_warehouse_as_the_scheduled_days(airflow: Settings, scheduled: dict) -> None:
    """Empty the warehouse, reload the same history, backfill the two days (newest first, to show
    order does not matter) through the real scheduler: same counts and checksums, table by table."""
    s = airflow
    reset_warehouse(s)
    load_history(s)
    assert warehouse_state(s)["raw.webhook_events"] != scheduled["state"]["raw.webhook_events"]

    backfill_id = airflow_services.create_backfill(
        s, "riskloop_ingest", _utc(FIRST), _utc(LAST), reprocess="completed", run_backwards=True)
    t0 = time.perf_counter()
    runs = airflow_services.wait_backfill(s, backfill_id, timeout_s=900)
    print(f"backfill of 2 intervals: {time.perf_counter() - t0:.0f}s")
    assert sorted(k[:10] for k in runs) == ["2024-02-29", "2024-03-01"], runs
    assert set(runs.values()) == {"success"}, runs

    backfilled = warehouse_state(s)
    assert backfilled.keys() == scheduled["state"].keys()
    differing = {t: (backfilled[t], scheduled["state"][t]) for t in backfilled
                 if backfilled[t] != scheduled["state"][t]}
    assert differing == {}
