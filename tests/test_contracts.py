"""The GX contracts pass on good data and name the table, expectation and count on bad data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from riskloop import db
from riskloop.contracts import EXPECTATIONS_DIR, ContractViolation, load_suite_specs, run_contracts
from riskloop.ingest import load_table
from riskloop.schema import RAW_TABLES, RAW_TABLES_BY_NAME, WEBHOOK_EVENT_TYPES
from tests.fixtures_data import make_tables, reset_warehouse


def test_suites_are_declared_for_every_table_and_name_real_columns() -> None:
    specs = load_suite_specs()
    assert set(specs) == {t.name for t in RAW_TABLES}
    for name, spec in specs.items():
        columns = set(RAW_TABLES_BY_NAME[name].column_names)
        for exp in spec["expectations"]:
            for key in ("column", "column_A", "column_B"):
                if key in exp["kwargs"]:
                    assert exp["kwargs"][key] in columns, (name, exp)
        types = {e["type"] for e in spec["expectations"]}
        assert "expect_table_row_count_to_be_between" in types
    event_types = next(e for e in specs["webhook_events"]["expectations"]
                       if e["kwargs"].get("column") == "event_type")["kwargs"]["value_set"]
    assert set(event_types) == set(WEBHOOK_EVENT_TYPES)
    assert json.loads((EXPECTATIONS_DIR / "ledger_entries.json").read_text())["table"] == "ledger_entries"


def _load(settings, tables) -> None:
    for name, df in tables.items():
        load_table(settings, name, df)


def test_good_data_passes_and_bad_batch_is_named(settings) -> None:
    reset_warehouse(settings)
    tables = make_tables()
    _load(settings, tables)
    report = run_contracts(settings)
    assert report.success and set(report.tables) == {t.name for t in RAW_TABLES}
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

    with pytest.raises(ContractViolation) as info:
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
    assert set(runs[-1][1]) == {"ledger_entries", "webhook_events", "dispute_outcomes"}
    assert runs[-1][1]["ledger_entries"][0]["unexpected_count"] == 1


def test_empty_table_fails_row_count(settings) -> None:
    reset_warehouse(settings)
    report = run_contracts(settings, ["kyc_records"], raise_on_failure=False)
    assert not report.success
    assert [f.expectation for f in report.failures] == ["expect_table_row_count_to_be_between"]
