"""dbt builds the documented marts from landed raw data, and terminal risk never uses a label early."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from riskloop.core import db, windows
from riskloop.core.schema import BATCH_FILE_TABLES, CONTRACT_TABLES_BY_NAME, RAW_TABLES_BY_NAME
from riskloop.data.ingest import load_landing, load_table
from riskloop.data.transform import DbtError, dbt_artifacts_dir, run_dbt
from tests.fixtures_data import T0, Payment, default_payments, make_tables, reset_warehouse, write_landing

DBT = Path(__file__).resolve().parents[1] / "dbt_project"

# docs/architecture.md, stage 4: the promise other stages code against.
MARTS = {
    "fct_transactions": {
        "payment_id": "text", "transaction_id": "bigint", "customer_id": "text", "terminal_id": "text",
        "card_token": "text", "tx_at": "timestamp with time zone", "amount": "double precision",
        "amount_minor": "bigint", "currency": "text", "processor": "text",
        "received_at": "timestamp with time zone", "is_weekend": "integer",
        "is_night": "integer", "is_fraud": "integer", "fraud_known_at": "timestamp with time zone",
        "label_source": "text", "refunded": "integer"},
    "fct_payment_adjustments": {
        "payment_id": "text", "currency": "text", "amount_minor": "bigint", "captured_minor": "bigint",
        "refunded_minor": "bigint", "reversed_minor": "bigint", "net_settled_minor": "bigint",
        "net_amount_at_risk_minor": "bigint", "is_fraud": "integer", "fraud_known_at": "timestamp with time zone",
        "n_ledger_entries": "bigint", "last_posted_at": "timestamp with time zone"},
    "settlement_reconciliation": {
        "source_file": "text", "line_no": "integer", "processor": "text", "payout_id": "text", "payment_id": "text",
        "settled_amount_minor": "bigint", "fee_minor": "bigint", "settled_currency": "text",
        "captured_amount_minor": "bigint", "captured_currency": "text", "amount_diff_minor": "bigint",
        "reconciliation_status": "text", "is_break": "boolean", "captured_at": "timestamp with time zone",
        "settled_at": "timestamp with time zone", "arrived_at": "timestamp with time zone"},
    "customer_spending_features": {
        "customer_id": "text", "event_timestamp": "timestamp with time zone",
        **{f"customer_nb_tx_{w}d": "bigint" for w in (1, 7, 30)},
        **{f"customer_avg_amount_{w}d": "double precision" for w in (1, 7, 30)},
        "customer_std_amount_30d": "double precision", "customer_max_amount_30d": "double precision"},
    "terminal_risk_features": {
        "terminal_id": "text", "event_timestamp": "timestamp with time zone",
        **{f"terminal_nb_tx_{w}d": "bigint" for w in (1, 7, 30)},
        **{f"terminal_risk_{w}d": "double precision" for w in (1, 7, 30)},
        **{f"terminal_reported_frauds_{w}d": "bigint" for w in (7, 14, 28)},
        **{f"terminal_reported_risk_{w}d": "double precision" for w in (7, 14, 28)},
        "terminal_days_since_reported_fraud": "double precision"},
    "credit_features": {
        "application_id": "text", "customer_id": "text", "event_timestamp": "timestamp with time zone",
        "amount": "double precision", "term_months": "integer", "annual_income": "double precision",
        "debt_to_income": "double precision", "n_delinquencies": "integer", "credit_history_months": "integer",
        "utilization": "double precision", "kyc_level": "integer", "pep": "integer"},
    "fct_credit_outcomes": {
        "application_id": "text", "applied_at": "timestamp with time zone", "defaulted": "integer",
        "observed_at": "timestamp with time zone", "true_default_probability": "double precision"},
    "credit_applicant_groups": {
        "application_id": "text", "applied_at": "timestamp with time zone", "age_band": "text"},
    **{windows.mart_name(e): {e.key: "text", windows.TIMESTAMP_FIELD: "timestamp with time zone",
                              **dict.fromkeys(windows.feature_names(e), "bigint")} for e in windows.ENTITIES},
}

DAYS = 16
LATE_FRAUD_TX = T0 + timedelta(hours=2)             # day 0, terminal T9
LATE_LABEL = T0 + timedelta(days=12, hours=5)       # its label arrives on day 12
EARLY_FRAUD_TX = T0 + timedelta(hours=3)            # day 0, terminal T8
EARLY_LABEL = T0 + timedelta(days=2)                # label known on day 2
YEN_TX = T0 + timedelta(days=5, hours=12)           # C1 pays once in JPY (12,000 yen = 12000.0 major units)


def _payments() -> list[Payment]:
    pays = default_payments(days=DAYS)
    pays += [
        Payment("pay_900001", "C2", "T9", LATE_FRAUD_TX, 50_000,
                dispute=(LATE_FRAUD_TX + timedelta(days=1), LATE_LABEL, "lost", True)),
        Payment("pay_900002", "C3", "T9", LATE_FRAUD_TX + timedelta(hours=1), 2_000),
        Payment("pay_900003", "C1", "T8", EARLY_FRAUD_TX, 40_000,
                dispute=(EARLY_FRAUD_TX + timedelta(hours=5), EARLY_LABEL, "lost", True)),
        Payment("pay_900004", "C3", "T8", EARLY_FRAUD_TX + timedelta(hours=2), 1_500),
        Payment("pay_900005", "C1", "T1", YEN_TX, 12_000, currency="JPY"),
    ]
    return pays


@pytest.fixture(scope="module")
def built(stack_env, tmp_path_factory):
    from riskloop.core.config import Settings

    settings = Settings()
    reset_warehouse(settings)
    tables = make_tables(_payments())
    load_landing(settings, write_landing(tables, tmp_path_factory.mktemp("landing")))
    run_dbt(settings, ["build"])
    return settings, tables


def _frame(settings, query: str) -> pd.DataFrame:
    with db.connect(settings) as conn:
        cur = conn.execute(query)
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def test_sources_declare_exactly_the_contract_columns() -> None:
    sources = {s["name"]: s for s in yaml.safe_load((DBT / "models/staging/_sources.yml").read_text())["sources"]}
    for source, tables in (("raw", RAW_TABLES_BY_NAME.values()), ("batch_files", BATCH_FILE_TABLES.values())):
        declared = {t["name"]: [c["name"] for c in t["columns"]] for t in sources[source]["tables"]}
        assert declared == {t.name: t.column_names for t in tables}, source
    # the batch files: freshness on their arrival time, every column described
    batch = sources["batch_files"]
    assert batch["config"]["loaded_at_field"] == "arrived_at" and batch["config"]["freshness"]["error_after"]
    assert all(c.get("description") for t in batch["tables"] for c in t["columns"])
    for name in CONTRACT_TABLES_BY_NAME:
        assert (DBT / f"models/staging/stg_{name}.sql").exists()


def test_realtime_marts_enforce_exactly_the_spec_columns() -> None:
    """The real-time marts' enforced contracts list riskloop/core/windows.py's columns, in its order."""
    models = {m["name"]: m for m in yaml.safe_load((DBT / "models/marts/_marts.yml").read_text())["models"]}
    for e in windows.ENTITIES:
        mart = models[windows.mart_name(e)]
        assert mart["config"]["contract"] == {"enforced": True}
        assert [c["name"] for c in mart["columns"]] == [e.key, windows.TIMESTAMP_FIELD, *windows.feature_names(e)]
        assert all(c["data_type"] and {"type": "not_null"} in c["constraints"] for c in mart["columns"])


def test_build_produces_documented_marts(built) -> None:
    settings, tables = built
    cols = _frame(settings, """
        select table_schema, table_name, column_name, data_type from information_schema.columns
        where table_schema in ('staging', 'intermediate', 'marts') order by ordinal_position""")
    marts = cols[cols.table_schema == "marts"]
    for mart, expected in MARTS.items():
        got = marts[marts.table_name == mart]
        assert dict(zip(got.column_name, got.data_type)) == expected, mart
    assert {f"stg_{n}" for n in CONTRACT_TABLES_BY_NAME} <= set(cols[cols.table_schema == "staging"].table_name)
    intermediate = set(cols[cols.table_schema == "intermediate"].table_name)
    assert {"int_payments", "int_fraud_labels", "int_settlement_reconciliation"} <= intermediate

    fct = _frame(settings, "select * from marts.fct_transactions")
    assert len(fct) == len(_payments())
    row = fct.set_index("payment_id").loc["pay_900001"]
    assert (row.transaction_id, row.is_fraud, row.amount) == (900001, 1, 500.0)
    assert row.fraud_known_at == LATE_LABEL
    assert fct.loc[fct.is_fraud == 0, "fraud_known_at"].isna().all()
    won = fct.set_index("payment_id").loc["pay_000011"]  # won dispute: not fraud
    assert won.is_fraud == 0
    assert fct.refunded.sum() == sum(p.refunded for p in _payments())
    assert set(fct.is_night) <= {0, 1} and (fct.is_night == (fct.tx_at.dt.hour <= 6).astype(int)).all()

    credit = _frame(settings, "select * from marts.credit_features order by application_id")
    assert list(credit.kyc_level) == [0, 1, 2] and list(credit.pep) == [0, 0, 1]
    assert len(_frame(settings, "select * from marts.fct_credit_outcomes")) == len(tables["credit_outcomes"])
    # the protected attribute reaches its own mart as data, and no mart a feature view reads
    groups = _frame(settings, "select application_id, age_band from marts.credit_applicant_groups order by 1")
    assert list(groups.age_band) == ["not_stated", "under_35", "55_and_over"]
    assert "age_band" not in credit.columns

    indexes = _frame(settings, "select tablename, indexdef from pg_indexes where schemaname = 'marts'")
    for mart, entity in [("customer_spending_features", "customer_id"), ("terminal_risk_features", "terminal_id")]:
        defs = indexes[indexes.tablename == mart].indexdef
        assert any(f"({entity}, event_timestamp)" in d for d in defs), mart


def test_customer_windows_end_at_and_include_the_transaction(built) -> None:
    """Counts over every currency, amount statistics over the row's own currency only."""
    settings, _ = built
    fct = _frame(settings, "select customer_id, tx_at, currency, amount from marts.fct_transactions")
    feats = _frame(settings, "select * from marts.customer_spending_features")
    assert len(feats) == len(fct)
    merged = feats.merge(fct.rename(columns={"tx_at": "event_timestamp"}), on=["customer_id", "event_timestamp"])
    yen = merged[merged.currency == "JPY"]
    c1_days_5_6 = merged[(merged.customer_id == "C1") & (merged.event_timestamp > YEN_TX)
                         & (merged.event_timestamp < YEN_TX + timedelta(days=1))]
    assert len(yen) == 1 and len(c1_days_5_6) > 0
    # 12,000 yen never lands in C1's euro statistics, and the yen row's statistics are its own
    assert yen.customer_avg_amount_30d.item() == 12_000.0 and (c1_days_5_6.customer_max_amount_30d < 12_000).all()
    for _, r in pd.concat([merged.sample(25, random_state=0), yen, c1_days_5_6]).iterrows():
        mine = fct[fct.customer_id == r.customer_id]
        same = mine[mine.currency == r.currency]
        for w in (1, 7, 30):
            inside = mine[(mine.tx_at > r.event_timestamp - timedelta(days=w)) & (mine.tx_at <= r.event_timestamp)]
            assert r[f"customer_nb_tx_{w}d"] == len(inside)
            inside = same[(same.tx_at > r.event_timestamp - timedelta(days=w)) & (same.tx_at <= r.event_timestamp)]
            assert r[f"customer_avg_amount_{w}d"] == pytest.approx(inside.amount.mean())
        inside = same[(same.tx_at > r.event_timestamp - timedelta(days=30)) & (same.tx_at <= r.event_timestamp)]
        assert r["customer_std_amount_30d"] == pytest.approx(inside.amount.std() if len(inside) > 1 else 0.0)
        assert r["customer_max_amount_30d"] == pytest.approx(inside.amount.max())


def test_terminal_risk_uses_labels_only_after_they_arrive(built) -> None:
    settings, _ = built
    feats = _frame(settings, "select * from marts.terminal_risk_features").set_index(["terminal_id", "event_timestamp"])
    day = lambda d: pd.Timestamp(T0 + timedelta(days=d))  # noqa: E731

    # One row per terminal per simulated day (the spine), also on days without transactions.
    n_terminals = feats.index.get_level_values(0).nunique()
    assert len(feats) == n_terminals * DAYS

    # T9's fraud (day 0) falls in the 1-day window of day 8, but its label only arrives on day 12.
    assert feats.loc[("T9", day(8)), "terminal_nb_tx_1d"] == 2
    assert feats.loc[("T9", day(8)), "terminal_risk_1d"] == 0.0
    assert feats.loc[("T9", day(12)), "terminal_nb_tx_30d"] == 2
    assert feats.loc[("T9", day(12)), "terminal_risk_30d"] == 0.0      # label at 05:00, after midnight
    assert feats.loc[("T9", day(13)), "terminal_risk_30d"] == 0.5      # known before day 13 starts
    # T8's fraud label arrived on day 2: usable as soon as the delay lets the transaction in.
    assert feats.loc[("T8", day(7)), "terminal_nb_tx_1d"] == 0          # day 0 not yet in [D-8, D-7)
    assert feats.loc[("T8", day(8)), "terminal_risk_1d"] == 0.5
    assert feats.loc[("T8", day(9)), "terminal_risk_1d"] == 0.0          # window moved past day 0
    assert feats.loc[("T8", day(9)), "terminal_risk_7d"] == 0.5

    # Reported frauds, no window delay: T8's label (day 2, 00:00) counts from day 3 on, T9's
    # (day 12, 05:00) from day 13 on; both payments were on day 0.
    assert feats.loc[("T8", day(2)), "terminal_reported_frauds_7d"] == 0
    assert pd.isna(feats.loc[("T8", day(2)), "terminal_days_since_reported_fraud"])
    assert feats.loc[("T8", day(3)), "terminal_reported_frauds_7d"] == 1
    assert feats.loc[("T8", day(3)), "terminal_days_since_reported_fraud"] == pytest.approx(3 - 3 / 24)
    assert feats.loc[("T8", day(7)), "terminal_reported_frauds_7d"] == 1   # [day 0, day 7)
    assert feats.loc[("T8", day(8)), "terminal_reported_frauds_7d"] == 0   # day 0 left the window
    assert feats.loc[("T8", day(8)), "terminal_reported_frauds_14d"] == 1
    assert feats.loc[("T9", day(12)), "terminal_reported_frauds_14d"] == 0
    assert feats.loc[("T9", day(13)), "terminal_reported_frauds_14d"] == 1
    assert feats.loc[("T9", day(13)), "terminal_reported_frauds_7d"] == 0

    # Naive recomputation of every terminal-day from fct_transactions.
    fct = _frame(settings, "select terminal_id, tx_at, is_fraud, fraud_known_at from marts.fct_transactions")
    delay = timedelta(days=settings.label_delay_days)
    for (terminal, d), r in feats.sample(60, random_state=1).iterrows():
        tx = fct[fct.terminal_id == terminal]
        for w in (1, 7, 30):
            inside = tx[(tx.tx_at >= d - delay - timedelta(days=w)) & (tx.tx_at < d - delay)]
            known = inside[(inside.is_fraud == 1) & (inside.fraud_known_at < d)]
            assert r[f"terminal_nb_tx_{w}d"] == len(inside)
            assert r[f"terminal_risk_{w}d"] == pytest.approx(len(known) / len(inside) if len(inside) else 0.0)
        reported = tx[(tx.is_fraud == 1) & (tx.fraud_known_at < d) & (tx.tx_at < d)]
        for w in (7, 14, 28):
            inside = tx[(tx.tx_at >= d - timedelta(days=w)) & (tx.tx_at < d)]
            n = int((reported.tx_at >= d - timedelta(days=w)).sum())
            assert r[f"terminal_reported_frauds_{w}d"] == n
            assert r[f"terminal_reported_risk_{w}d"] == pytest.approx(n / len(inside) if len(inside) else 0.0)
        recent = reported[reported.tx_at >= d - timedelta(days=60)]
        expected = (d - recent.tx_at.max()) / timedelta(days=1) if len(recent) else None
        assert (pd.isna(r["terminal_days_since_reported_fraud"]) if expected is None
                else r["terminal_days_since_reported_fraud"] == pytest.approx(expected))


def test_failing_dbt_test_raises_with_node_name(built) -> None:
    settings, tables = built
    orphan = tables["credit_outcomes"].iloc[[0]].assign(application_id="app_missing")
    load_table(settings, "credit_outcomes", orphan)
    try:
        with pytest.raises(DbtError) as info:
            run_dbt(settings, ["test", "--select", "stg_credit_outcomes"])
        assert any("relationships_stg_credit_outcomes" in node for node, _, _ in info.value.failures)
    finally:
        with db.connect(settings) as conn:
            conn.execute("delete from raw.credit_outcomes where application_id = 'app_missing'")


def test_dbt_unit_tests_pin_the_label_delay_logic(built) -> None:
    """dbt's own unit tests (fixture rows in, expected rows out) for the label arrival time and the
    delayed terminal-risk windows; `dbt build` runs them before the models, this runs them alone."""
    settings, _ = built
    result = run_dbt(settings, ["test", "--select", "test_type:unit"])
    outcome = {r.node.name: str(r.status) for r in result.results}
    assert {"chargeback_verdict_arrives_with_its_report", "chargeback_later_report_supersedes_and_won_clears",
            "fraud_label_takes_the_highest_precedence_source", "payment_events_merge_files_and_inbox_on_first_receipt",
            "terminal_risk_counts_only_labels_known_before_the_day",
            "card_windows_edges_and_ties", "card_windows_sum_one_currency",
            "settlement_lines_are_reconciled_per_payment", "case_verdicts_become_signals_when_the_case_closes",
            "failed_step_ups_are_fraud_signals_when_recorded"} <= set(outcome)
    assert set(outcome.values()) == {"pass"}, outcome


def test_docs_generate_catalogues_the_marts(built) -> None:
    """`dbt docs generate` works against the warehouse: every mart is in the catalog with its columns."""
    settings, _ = built
    run_dbt(settings, ["docs", "generate"])
    catalog = json.loads((dbt_artifacts_dir(settings) / "target" / "catalog.json").read_text())
    marts = {node["metadata"]["name"]: set(node["columns"]) for node in catalog["nodes"].values()
             if node["metadata"]["schema"] == "marts"}
    assert {"fct_transactions", "terminal_risk_features", "customer_spending_features"} <= set(marts)
    assert {"payment_id", "tx_at", "is_fraud", "fraud_known_at"} <= marts["fct_transactions"]
    assert catalog["errors"] is None


def test_int_payments_is_incremental_and_matches_a_full_refresh(built) -> None:
    """New events re-pivot only the payments they touch (a refund of an old payment, a new
    payment), and the incremental result is row for row what a --full-refresh build gives."""
    settings, tables = built
    events = tables["webhook_events"]
    authorized = events[events["event_type"] == "payment.authorized"]
    old, template = authorized.iloc[0], authorized.iloc[1]
    refund = old.copy()
    refund["event_id"], refund["event_type"] = "evt_incr_refund", "payment.refunded"
    refund["occurred_at"] = refund["received_at"] = old["occurred_at"] + timedelta(days=1)
    new = template.copy()
    new["event_id"], new["payment_id"] = "evt_incr_new", "pay_990001"
    load_table(settings, "webhook_events", pd.DataFrame([refund, new]).reset_index(drop=True))

    def state() -> tuple[tuple[int, str], dict]:
        with db.connect(settings) as conn:
            rows = dict(conn.execute("select payment_id, refunded_at from intermediate.int_payments "
                                     "where payment_id in (%s, %s)", (old["payment_id"], "pay_990001")).fetchall())
            return db.table_checksum(conn, "intermediate.int_payments"), rows

    # No lookback here: every fixture load is minutes old, and the default 2 h would re-read them all.
    result = run_dbt(settings, ["build", "--select", "int_payments"], vars={"incremental_lookback_hours": 0})
    node = next(r for r in result.results if r.node.name == "int_payments")
    assert node.adapter_response.get("rows_affected") == 2  # the two touched payments, not the table
    incremental, rows = state()
    assert rows[old["payment_id"]] == refund["occurred_at"] and "pay_990001" in rows
    assert incremental[0] == len(authorized) + 1

    run_dbt(settings, ["build", "--select", "int_payments", "--full-refresh"])
    assert state()[0] == incremental
