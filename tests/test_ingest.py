"""Ingestion is idempotent, updates only changed rows, and writes nothing when a file breaks the contract."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from riskloop.core import db
from riskloop.core.schema import RAW_TABLES
from riskloop.data.ingest import ContractError, SchemaOutOfDate, load_landing, load_table
from tests.fixtures_data import T0, make_tables, reset_warehouse, write_landing


def _snapshot(settings, table: str) -> list[tuple]:
    spec = next(t for t in RAW_TABLES if t.name == table)
    cols = ", ".join(spec.column_names)
    with db.connect(settings) as conn:
        return conn.execute(f"select {cols} from raw.{table} order by {', '.join(spec.key)}").fetchall()


def _count(settings, query: str) -> int:
    with db.connect(settings) as conn:
        return conn.execute(query).fetchone()[0]


@pytest.fixture()
def clean(settings):
    reset_warehouse(settings)
    return settings


def test_landing_twice_is_idempotent(clean, tmp_path) -> None:
    settings = clean
    tables = make_tables()
    landing = write_landing(tables, tmp_path / "landing")
    first = {r.table: r for r in load_landing(settings, landing)}
    before = {t.name: _snapshot(settings, t.name) for t in RAW_TABLES}
    second = {r.table: r for r in load_landing(settings, landing)}
    assert set(first) == {t.name for t in RAW_TABLES}
    for name, df in tables.items():
        assert first[name].rows_inserted == len(df) and first[name].rows_updated == 0
        assert second[name].rows_inserted == 0 and second[name].rows_updated == 0
        assert second[name].rows_unchanged == len(df)
        assert _snapshot(settings, name) == before[name]
    assert _count(settings, "select count(*) from raw.load_batches") == 2 * len(RAW_TABLES)
    row = None
    with db.connect(settings) as conn:
        row = conn.execute("select rows_in, rows_inserted, rows_updated, source_file from raw.load_batches "
                           "where table_name = 'webhook_events' order by batch_id desc limit 1").fetchone()
    assert row[0] == len(tables["webhook_events"]) and row[1:3] == (0, 0)
    assert row[3].endswith("webhook_events.parquet")


def test_changed_row_is_updated_and_batch_duplicates_keep_last(clean) -> None:
    settings = clean
    events = make_tables()["webhook_events"]
    load_table(settings, "webhook_events", events)
    changed = events.copy()
    changed.loc[0, "amount_minor"] = 999_999
    # a processor retry: the same event twice in one batch, the later copy wins
    retry = changed.iloc[[1]].assign(received_at=changed.loc[1, "received_at"] + timedelta(minutes=5))
    batch = pd.concat([changed, retry], ignore_index=True)
    result = load_table(settings, "webhook_events", batch)
    assert (result.rows_inserted, result.rows_updated, result.duplicates_in_batch) == (0, 2, 1)
    with db.connect(settings) as conn:
        amount = conn.execute("select amount_minor from raw.webhook_events where event_id = %s",
                              (events.loc[0, "event_id"],)).fetchone()[0]
        received = conn.execute("select received_at from raw.webhook_events where event_id = %s",
                                (events.loc[1, "event_id"],)).fetchone()[0]
    assert amount == 999_999
    assert received == retry["received_at"].iloc[0].to_pydatetime()


def test_bad_columns_rejected_and_nothing_written(clean, tmp_path) -> None:
    settings = clean
    tables = make_tables()
    bad = tables["ledger_entries"].drop(columns=["currency"]).assign(note="x")
    with pytest.raises(ContractError, match=r"missing: \['currency'\].*extra: \['note'\]"):
        load_table(settings, "ledger_entries", bad)
    # one bad file in a landing: the good files are not loaded either
    tables["dispute_outcomes"] = tables["dispute_outcomes"].drop(columns=["status"])
    landing = write_landing(tables, tmp_path / "landing")
    with pytest.raises(ContractError, match="dispute_outcomes.*status"):
        load_landing(settings, landing)
    with db.connect(settings) as conn:
        exists = conn.execute("select to_regclass('raw.webhook_events')").fetchone()[0]
        if exists:
            assert conn.execute("select count(*) from raw.webhook_events").fetchone()[0] == 0
    # a null key is a contract error too, raised before the database is touched
    nulls = make_tables()["kyc_records"]
    nulls.loc[0, "customer_id"] = None
    with pytest.raises(ContractError, match="customer_id: 1 null"):
        load_table(settings, "kyc_records", nulls)


def test_warehouse_of_an_older_version_is_migrated_or_refused(clean) -> None:
    """A raw table created before a nullable column joined the contract gains it on the next load
    (its old rows hold null; dbt's views over it stay valid); one missing a required column is an
    explicit error that loads nothing."""
    settings = clean
    events = make_tables()["webhook_events"].assign(card_bin="411111")
    load_table(settings, "webhook_events", events.iloc[:5])
    with db.connect(settings) as conn:
        conn.execute("create view raw._older_reader as select event_id from raw.webhook_events")
        conn.execute("alter table raw.webhook_events drop column card_bin")  # as an older riskloop made it
    try:
        result = load_table(settings, "webhook_events", events)
        # the five old rows lacked the column: the file's values for them are an update
        assert (result.rows_inserted, result.rows_updated) == (len(events) - 5, 5)
        with db.connect(settings) as conn:
            bins = conn.execute("select distinct card_bin from raw.webhook_events").fetchall()
            assert conn.execute("select count(*) from raw._older_reader").fetchone()[0] == len(events)
        assert bins == [("411111",)]

        with db.connect(settings) as conn:
            conn.execute("alter table raw.webhook_events drop column currency")
        before = _count(settings, "select count(*) from raw.load_batches")
        with pytest.raises(SchemaOutOfDate, match="raw.webhook_events predates the required column 'currency'"):
            load_table(settings, "webhook_events", events)
        assert _count(settings, "select count(*) from raw.load_batches") == before
        assert _count(settings, "select count(*) from raw.webhook_events") == len(events)
    finally:
        with db.connect(settings) as conn:
            conn.execute("drop view if exists raw._older_reader")
            conn.execute("drop table raw.webhook_events cascade")


def test_interval_loads_only_rows_inside(clean, tmp_path) -> None:
    settings = clean
    tables = make_tables()
    landing = write_landing(tables, tmp_path / "landing")
    start, end = T0 + timedelta(days=2), T0 + timedelta(days=4)
    results = {r.table: r for r in load_landing(settings, landing, start, end)}
    occurred = tables["webhook_events"]["occurred_at"]
    expected = int(((occurred >= start) & (occurred < end)).sum())
    assert results["webhook_events"].rows_inserted == expected > 0
    with db.connect(settings) as conn:
        lo, hi = conn.execute("select min(occurred_at), max(occurred_at) from raw.webhook_events").fetchone()
        interval = conn.execute("select interval_start, interval_end from raw.load_batches limit 1").fetchone()
    assert start <= lo and hi < end
    assert interval == (start, end)


@pytest.fixture()
def own_postgres():
    """A Postgres of this test's own (embedded, temp home): it is crashed on purpose below, which
    the session's server, shared by every other test, must not be."""
    import shutil
    import tempfile
    from pathlib import Path

    from riskloop.core import migrations
    from riskloop.core.config import Settings
    from riskloop.ops import stack
    from tests.conftest import free_port

    home = Path(tempfile.mkdtemp(prefix="riskloop-crash-"))
    home.chmod(0o755)
    s = Settings(home=home, pg_port=free_port())
    stack.start_postgres(s)
    stack.ensure_databases(s)
    migrations.upgrade(s)
    try:
        yield s
    finally:
        stack.stop_postgres(s, mode="immediate")
        shutil.rmtree(home, ignore_errors=True)


def test_postgres_stopped_mid_load_then_rerun_gives_exact_counts(own_postgres, tmp_path) -> None:
    """The server dies while a load's transaction is open (after the batch row and the COPY, while
    the upsert waits): nothing of it survives recovery, and running the load again gives exact
    counts and the same table checksums as an undisturbed load, twice over."""
    import threading
    import time

    from riskloop.data.ingest import create_raw_tables
    from riskloop.ops import stack

    s = own_postgres
    tables = make_tables()
    landing = write_landing(tables, tmp_path / "landing")
    with db.connect(s) as conn:
        create_raw_tables(conn)

    # Hold the target table so the load stops, mid-transaction, at its upsert into it.
    import psycopg

    blocker = psycopg.connect(db.dsn(s))
    blocker.execute("lock table raw.webhook_events in access exclusive mode")
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_landing(s, landing)
        except BaseException as exc:  # noqa: BLE001 - the crash is the point; keep it for the assert
            errors.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    deadline = time.monotonic() + 60
    with db.connect(s, autocommit=True) as probe:
        while True:
            waiting = probe.execute(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                "and backend_xid is not null and query ilike '%%raw%%webhook_events%%'").fetchone()[0]
            if waiting or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert waiting == 1, "the load never reached its upsert"
    stack.stop_postgres(s, mode="immediate")
    loader.join(timeout=60)
    try:
        blocker.close()
    except Exception:  # noqa: BLE001 - its server is gone
        pass
    assert errors and not loader.is_alive(), "the load should have failed with the server"

    stack.start_postgres(s)  # crash recovery
    assert {t.name: _count(s, f"select count(*) from raw.{t.name}") for t in RAW_TABLES} == {
        t.name: 0 for t in RAW_TABLES}
    assert _count(s, "select count(*) from raw.load_batches") == 0

    load_landing(s, landing)
    after_rerun = {t.name: _snapshot(s, t.name) for t in RAW_TABLES}
    for name, df in tables.items():
        assert len(after_rerun[name]) == len(df), name
    with db.connect(s) as conn:
        checksums = {t.name: db.table_checksum(conn, f"raw.{t.name}", list(t.column_names)) for t in RAW_TABLES}
    load_landing(s, landing)
    with db.connect(s) as conn:
        assert {t.name: db.table_checksum(conn, f"raw.{t.name}", list(t.column_names)) for t in RAW_TABLES} == checksums
    assert _count(s, "select count(*) from raw.load_batches") == 2 * len(RAW_TABLES)


def test_row_with_text_postgres_cannot_store_is_quarantined_and_the_rest_loads(clean, tmp_path) -> None:
    """A NUL in one row of a landed file would fail the file's whole COPY: that row goes to
    quarantine with its reason (its text escaped), every other row loads."""
    settings = clean
    tables = make_tables()
    events = tables["webhook_events"]
    bad_id = events.loc[3, "event_id"]
    events.loc[3, "customer_id"] = "cus\x00tomer"
    landing = write_landing(tables, tmp_path / "landing")
    result = next(r for r in load_landing(settings, landing, tables=["webhook_events"]))
    assert (result.rows_in, result.rows_quarantined, result.rows_inserted) == (len(events), 1, len(events) - 1)
    assert result.rows_unchanged == 0
    with db.connect(settings) as conn:
        assert conn.execute("select count(*) from raw.webhook_events where event_id = %s", (bad_id,)).fetchone()[0] == 0
        customer, expectations = conn.execute(
            "select customer_id, _expectations from quarantine.webhook_events where event_id = %s", (bad_id,)).fetchone()
    assert customer == "cus\\u0000tomer"
    assert expectations[0].startswith("unstorable_text: customer_id: contains a NUL character")
    assert _count(settings, "select count(*) from raw.webhook_events") == len(events) - 1
