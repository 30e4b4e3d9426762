"""The GX contracts pass on good data and name the table, expectation and count on bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from riskloop.core import db, windows
from riskloop.core.config import Settings
from riskloop.core.schema import CONTRACT_TABLES, CONTRACT_TABLES_BY_NAME, RAW_TABLES, WEBHOOK_EVENT_TYPES
from riskloop.data.contracts import EXPECTATIONS_DIR, ContractViolation, latest_runs, load_suite_specs, run_contracts
from riskloop.data.ingest import load_table
from tests.fixtures_data import make_tables, reset_warehouse

DOCS = Path(__file__).resolve().parents[1] / "docs" / "contracts"


def test_suites_are_declared_for_every_table_and_name_real_columns() -> None:
    specs = load_suite_specs()
    assert set(specs) == {t.name for t in CONTRACT_TABLES}  # the batch files' tables too
    for name, spec in specs.items():
        columns = set(CONTRACT_TABLES_BY_NAME[name].column_names)
        for exp in spec["expectations"]:
            for key in ("column", "column_A", "column_B"):
                if key in exp["kwargs"]:
                    assert exp["kwargs"][key] in columns, (name, exp)
        types = {e["type"] for e in spec["expectations"]}
        # a landed feed must not be empty; a processor's batch files may not have arrived yet
        assert ("expect_table_row_count_to_be_between" in types) == (name in {t.name for t in RAW_TABLES}), name
        # one documented contract per source: its page names every column and its suite
        page = (DOCS / f"{name}.md").read_text()
        assert all(f"`{c}`" in page for c in columns) and f"expectations/{name}.json" in page, name
    event_types = next(e for e in specs["webhook_events"]["expectations"]
                       if e["kwargs"].get("column") == "event_type")["kwargs"]["value_set"]
    assert set(event_types) == set(WEBHOOK_EVENT_TYPES)
    assert json.loads((EXPECTATIONS_DIR / "ledger_entries.json").read_text())["table"] == "ledger_entries"


def _load(settings, tables) -> None:
    for name, df in tables.items():
        load_table(settings, name, df)


def test_good_data_passes_and_bad_batch_is_named(settings, caplog: pytest.LogCaptureFixture) -> None:
    reset_warehouse(settings)
    tables = make_tables()
    _load(settings, tables)
    report = run_contracts(settings)
    assert report.success and set(report.tables) == {t.name for t in CONTRACT_TABLES}
    assert all(t.evaluated > 0 and not t.failed for t in report.tables.values())

    # a bad batch: one journal no longer balances, one webhook has a negative amount,
    # one dispute closes before it opened
    ledger = tables["ledger_entries"].copy()
    ledger.loc[0, "amount_minor"] += 1
    events = tables["webhook_events"].copy()
    events.loc[3, "amount_minor"] = -5
    disputes = tables["dispute_outcomes"].copy()
    disputes.loc[0, "closed_at"] = disputes.loc[0, "opened_at"] - pd.Timedelta(hours=1)
    _load(settings, {"ledger_entries": ledger, "webhook_events": events, "dispute_outcomes": disputes})

    with caplog.at_level("ERROR", logger="riskloop.alerts"), pytest.raises(ContractViolation) as info:
        run_contracts(settings)
    report = info.value.report
    failed = {(f.table, f.expectation, f.column): f for f in report.failures}
    assert set(failed) == {
        ("ledger_entries", "unexpected_rows_expectation", None),
        ("webhook_events", "expect_column_values_to_be_between", "amount_minor"),
        ("dispute_outcomes", "expect_column_pair_values_a_to_be_greater_than_b", "closed_at,opened_at"),
    }
    assert failed[("ledger_entries", "unexpected_rows_expectation", None)].unexpected_count == 1
    assert failed[("webhook_events", "expect_column_values_to_be_between", "amount_minor")].unexpected_count == 1
    message = str(info.value)
    assert "ledger_entries" in message and "sums to zero" in message and "amount_minor" in message
    assert report.tables["kyc_records"].success

    with db.connect(settings) as conn:
        runs = conn.execute("select success, failures from raw.contract_runs order by run_at").fetchall()
    assert [r[0] for r in runs][-2:] == [True, False]
    # what a training run records as its data-contract result: the latest run, failed, with its counts
    [latest] = [r for r in latest_runs(settings) if r["schema"] == "raw"]
    assert latest["run_id"] == report.run_id and latest["success"] is False and latest["failed"] == 3
    assert latest["evaluated"] == sum(t.evaluated for t in report.tables.values())
    assert set(runs[-1][1]) == {"ledger_entries", "webhook_events", "dispute_outcomes"}
    assert runs[-1][1]["ledger_entries"][0]["unexpected_count"] == 1

    # quarantine: exactly the failing rows moved out of raw, with what they broke and where from;
    # both lines of the unbalanced journal go (the journal is the unit that is wrong)
    bad_journal = ledger.loc[0, "journal_id"]
    assert report.quarantined == {"ledger_entries": 2, "webhook_events": 1, "dispute_outcomes": 1}
    with db.connect(settings) as conn:
        q_ledger = conn.execute("select entry_id, journal_id, _expectations, _batch_id, _contract_run_id::text "
                                "from quarantine.ledger_entries order by entry_id").fetchall()
        q_events = conn.execute("select event_id, amount_minor, _expectations from quarantine.webhook_events").fetchall()
        q_disputes = conn.execute("select dispute_id, _expectations from quarantine.dispute_outcomes").fetchall()
        counts = {t: conn.execute(f"select count(*) from raw.{t}").fetchone()[0]
                  for t in ("ledger_entries", "webhook_events", "dispute_outcomes", "kyc_records")}
        quarantined_col = conn.execute("select quarantined from raw.contract_runs where run_id = %s",
                                       (report.run_id,)).fetchone()[0]
    assert {r[1] for r in q_ledger} == {bad_journal} and len(q_ledger) == 2
    assert all(r[2] == ["unexpected_rows_expectation[every journal sums to zero per currency (double entry)]"]
               and r[4] == report.run_id and r[3] is not None for r in q_ledger)
    assert q_events == [(events.loc[3, "event_id"], -5, ["expect_column_values_to_be_between(amount_minor)"])]
    assert q_disputes == [(disputes.loc[0, "dispute_id"],
                           ["expect_column_pair_values_a_to_be_greater_than_b(closed_at,opened_at)"])]
    assert counts == {"ledger_entries": len(ledger) - 2, "webhook_events": len(events) - 1,
                      "dispute_outcomes": len(disputes) - 1, "kyc_records": len(tables["kyc_records"])}
    assert quarantined_col == report.quarantined
    # a readable reason, an alert record, and Data Docs for the run
    assert "2 rows of ledger_entries -> quarantine.ledger_entries" in message
    [alert] = [json.loads(r.getMessage().removeprefix("riskloop alert ")) for r in caplog.records
               if r.name == "riskloop.alerts" and "contract_violation" in r.getMessage()]
    assert alert["kind"] == "contract_violation" and alert["details"]["quarantined"] == report.quarantined
    assert report.data_docs and Path(report.data_docs).exists()
    assert "ledger_entries" in Path(report.data_docs).read_text()
    # what is left in raw is the good data: it passes, and the quarantine is untouched by that run
    assert run_contracts(settings).success

    # the same bad file loaded again is quarantined again, not duplicated
    _load(settings, {"webhook_events": events})
    with pytest.raises(ContractViolation):
        run_contracts(settings, ["webhook_events"])
    with db.connect(settings) as conn:
        assert conn.execute("select count(*) from quarantine.webhook_events").fetchone()[0] == 1
        assert conn.execute("select count(*) from raw.webhook_events").fetchone()[0] == len(events) - 1


def test_feature_mart_suites(settings) -> None:
    from fixtures_marts import isolated_settings, make_marts, write_marts

    from riskloop.data.contracts import load_mart_specs, run_mart_contracts

    batch_marts = ["customer_spending_features", "terminal_risk_features", "credit_features"]
    assert set(load_mart_specs()) == {*batch_marts, *(windows.mart_name(e) for e in windows.ENTITIES)}
    mart_settings = isolated_settings("riskloop_t_mart_contracts")
    write_marts(mart_settings, make_marts(days=20, customers=30, terminals=15, seed=3))
    assert run_mart_contracts(mart_settings, batch_marts).success  # (the real-time ones: tests/test_realtime.py)
    with db.connect(mart_settings) as conn:
        conn.execute("update marts.terminal_risk_features set terminal_risk_7d = 1.5 "
                     "where ctid = (select min(ctid) from marts.terminal_risk_features)")
    with pytest.raises(ContractViolation) as info:
        run_mart_contracts(mart_settings, batch_marts)
    assert [(f.table, f.label, f.unexpected_count) for f in info.value.report.failures] == [
        ("terminal_risk_features", "expect_column_values_to_be_between(terminal_risk_7d)", 1)]


def test_empty_table_fails_row_count(settings) -> None:
    reset_warehouse(settings)
    report = run_contracts(settings, ["kyc_records"], raise_on_failure=False)
    assert not report.success
    assert [f.expectation for f in report.failures] == ["expect_table_row_count_to_be_between"]


def test_latest_runs_reads_a_runs_table_from_before_the_schema_column(stack_env: dict[str, str]) -> None:
    """A warehouse whose ``raw.contract_runs`` predates ``schema_name``, from before migrations
    existed: ``riskloop db upgrade`` brings it up to date, so training reads it instead of failing
    with UndefinedColumn."""
    from riskloop.core import migrations

    base = Settings()
    with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute('drop database if exists "riskloop_t_contract_runs_v1" with (force)')
        conn.execute('create database "riskloop_t_contract_runs_v1"')
    settings = Settings(database_url=base.pg.url("riskloop_t_contract_runs_v1", driver=""))
    with db.connect(settings) as conn:
        conn.execute("create schema raw")
        conn.execute("create table raw.contract_runs (run_id uuid primary key, run_at timestamptz not null, "
                     "success boolean not null, tables text[] not null, failures jsonb not null, "
                     "evaluated jsonb not null, seconds double precision not null)")
        conn.execute("insert into raw.contract_runs values ('6f1c0d1e-8a43-4c57-9d2a-2f0f5d0c1a11', "
                     "'2024-03-01T00:05:00+00:00', true, '{ledger_entries}', '{}', '{\"ledger_entries\": 4}', 1.5)")
    migrations.upgrade(settings)
    [run] = latest_runs(settings)
    assert run["schema"] == "raw" and run["success"] is True and run["evaluated"] == 4
    assert run["run_id"] == "6f1c0d1e-8a43-4c57-9d2a-2f0f5d0c1a11"
