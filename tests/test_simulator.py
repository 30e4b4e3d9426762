"""Behaviour of the simulator: determinism, the raw-table contract, the handbook's statistics,
the realism rule (nothing lands after ``as_of``) and the credit oracle.

Runs in a few seconds: one moderate simulation (2,000 customers x 60 days, ~230k transactions)
shared by the statistical tests, and small ones for determinism and round trips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from riskloop.core.schema import RAW_TABLES, RAW_TABLES_BY_NAME, WEBHOOK_EVENT_TYPES, RawTable
from riskloop.simulator import PRESETS, Simulation, derive_from_handbook, infer_period, resolve_params, simulate, write
from riskloop.simulator import handbook as hb
from riskloop.simulator.credit import TRUE_PD_MODEL, default_probability
from riskloop.simulator.derive import derive_tables
from riskloop.simulator.frames import PANDAS_DTYPES, arrow_schema

# --- Reference statistics of the real handbook file --------------------------------------
# Computed once from /work/shared/datasets/fraud-handbook/transactions.parquet (1,754,155 rows,
# 5,000 customers, 10,000 terminals, 183 days) with:
#     n = len(df); counts = df.TX_FRAUD_SCENARIO.value_counts()
#     HANDBOOK_FRAUD_RATE = df.TX_FRAUD.mean()
#     HANDBOOK_SCENARIO_1_SHARE = counts[1] / n                                  (973 rows)
#     HANDBOOK_SCENARIO_2_EXPOSURE_RATIO = (counts[2] / n) / _exposure(183, 28, 2, 10_000, 182)
#     HANDBOOK_SCENARIO_3_EXPOSURE_RATIO = (counts[3] / n) / _exposure(183, 14, 1, 5_000, 182)
#     HANDBOOK_TX_PER_CUSTOMER_DAY = n / (5_000 * 183)
# Scenario 2 and 3 shares scale with the number of terminals / customers and with the ramp-up
# of the compromise windows, so they are compared as a ratio to their "exposure" (the expected
# share if compromised entities had average traffic, `_exposure`); the handbook drew
# compromises on days 0..181 only.  Scenario 1 depends only on the amount model, so its share
# compares directly.
HANDBOOK_FRAUD_RATE = 0.008369
HANDBOOK_SCENARIO_1_SHARE = 0.0005547
HANDBOOK_SCENARIO_2_EXPOSURE_RATIO = 0.9978  # 9,077 rows
HANDBOOK_SCENARIO_3_EXPOSURE_RATIO = 0.9780  # 4,631 rows
HANDBOOK_TX_PER_CUSTOMER_DAY = 1.9171
# Tolerances: over 40 seeds of the 2,000 x 60 configuration below, the relative standard
# deviations were 10% (scenario-1 share), 3.1% (scenario-2 ratio), 4.5% (scenario-3 ratio) and
# 0.026 absolute tx per customer-day; each band is about 4 standard deviations, so a seed
# change will not flake, while a broken scenario (e.g. a wrong window or rate) falls outside.
SCENARIO_1_TOLERANCE = 0.40
SCENARIO_2_TOLERANCE = 0.15
SCENARIO_3_TOLERANCE = 0.20
TX_PER_CUSTOMER_DAY_TOLERANCE = 0.10
# Theoretical mean tx per customer-day: mean Poisson rate 2, times P(0 < int(N(43200, 20000)) < 86400).
EXPECTED_TX_PER_CUSTOMER_DAY = 2 * 0.96925

DAYS, CUSTOMERS, SEED = 60, 2000, 7


def _exposure(days: int, window: int, per_day: int, population: int, draw_days: int) -> float:
    """Expected fraud share if ``per_day`` entities out of ``population`` are compromised on each
    of the first ``draw_days`` days for ``window`` days and carry average traffic."""
    d = np.arange(days)[:, None]
    s = np.arange(draw_days)[None, :]
    return float(per_day * ((s <= d) & (d < s + window)).sum(axis=1).mean() / population)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(days=DAYS, customers=CUSTOMERS, seed=SEED)


@pytest.fixture(scope="module")
def small() -> Simulation:
    return simulate(days=20, customers=200, seed=3)


def _utc(values: pd.Series | pd.Index) -> np.ndarray:
    """datetime64[ns] UTC values (a tz-aware column's ``to_numpy()`` is a slow object array)."""
    return values.to_numpy(dtype="datetime64[ns]")


def _assert_same(a: Simulation, b: Simulation) -> None:
    pd.testing.assert_frame_equal(a.transactions, b.transactions)
    assert a.tables.keys() == b.tables.keys()
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], obj=name)
    assert a.as_of == b.as_of


# --- determinism ----------------------------------------------------------------------------

def test_same_seed_gives_identical_frames(small: Simulation) -> None:
    _assert_same(small, simulate(days=20, customers=200, seed=3))


def test_different_seed_gives_different_frames(small: Simulation) -> None:
    other = simulate(days=20, customers=200, seed=4)
    assert not small.transactions.equals(other.transactions)
    for name in ("webhook_events", "kyc_records", "credit_applications"):
        assert not small.tables[name].equals(other.tables[name]), name


def test_customer_profiles_do_not_depend_on_days() -> None:
    # Independent streams per stage: a longer run of the same seed has the same customers.
    a = hb.generate(days=5, customers=50, seed=1).customers
    b = hb.generate(days=9, customers=50, seed=1).customers
    pd.testing.assert_frame_equal(a, b)


# --- the handbook generator ------------------------------------------------------------------

def test_transactions_have_the_handbook_dtypes(sim: Simulation) -> None:
    tx = sim.transactions
    assert list(tx.columns) == list(hb.TRANSACTION_COLUMNS)
    assert {c: str(t) for c, t in tx.dtypes.items()} == hb.TRANSACTION_COLUMNS
    assert (tx.TRANSACTION_ID.to_numpy() == np.arange(len(tx))).all()
    assert tx.TX_DATETIME.is_monotonic_increasing
    assert ((tx.TX_TIME_SECONDS // hb.SECONDS_PER_DAY) == tx.TX_TIME_DAYS).all()
    start = pd.Timestamp(sim.params.start_date)
    assert (tx.TX_DATETIME == start + pd.to_timedelta(tx.TX_TIME_SECONDS, unit="s")).all()
    assert tx.TX_TIME_DAYS.between(0, DAYS - 1).all()
    assert (tx.TX_AMOUNT >= 0).all()
    assert np.allclose(tx.TX_AMOUNT, tx.TX_AMOUNT.round(2))
    assert set(tx.TX_FRAUD.unique()) <= {0, 1}
    assert ((tx.TX_FRAUD_SCENARIO > 0) == (tx.TX_FRAUD == 1)).all()


def test_transaction_dtypes_match_the_real_handbook_file(handbook_path: Path) -> None:
    real = pq.read_schema(handbook_path).empty_table().to_pandas()
    assert {c: str(t) for c, t in real.dtypes.items()} == hb.TRANSACTION_COLUMNS


def test_handbook_profiles_are_the_published_files_customers_and_terminals(handbook_path: Path) -> None:
    """`hb.handbook_profiles` is the handbook's own draw: every customer of the real file used only
    terminals within r of the reconstructed positions, and spent and transacted as its profile says."""
    real = pd.read_parquet(handbook_path, columns=["CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"])
    cust, term = hb.handbook_profiles(5000, 10_000)
    pairs = real[["CUSTOMER_ID", "TERMINAL_ID"]].drop_duplicates().astype(np.int64)
    c = cust.loc[pairs.CUSTOMER_ID]
    t = term.loc[pairs.TERMINAL_ID]
    dist = np.hypot(c.x_customer_id.to_numpy() - t.x_terminal_id.to_numpy(),
                    c.y_customer_id.to_numpy() - t.y_terminal_id.to_numpy())
    assert (dist < hb.DEFAULT_RADIUS).all()
    genuine = real[real.TX_FRAUD == 0]
    spent = genuine.groupby(genuine.CUSTOMER_ID.astype(np.int64)).TX_AMOUNT.mean()
    profile = cust.mean_amount.loc[spent.index]
    assert np.corrcoef(spent, profile)[0, 1] > 0.99
    # negative draws are redrawn from U(0, 2·mean): the mean of what is spent is ~2.7% above the profile's
    assert 1.0 < float(np.median(spent / profile)) < 1.05
    rate = real.groupby(real.CUSTOMER_ID.astype(np.int64)).size() / 183
    assert np.corrcoef(rate, cust.mean_nb_tx_per_day.loc[rate.index])[0, 1] > 0.99


def test_generate_with_handbook_profiles_keeps_the_seeds_transactions_streams() -> None:
    data = hb.generate(days=3, customers=50, seed=1, with_handbook_profiles=True)
    cust, term = hb.handbook_profiles(50, 100)
    pd.testing.assert_frame_equal(data.customers.drop(columns="nb_terminals"), cust)
    pd.testing.assert_frame_equal(data.terminals, term)
    again = hb.generate(days=3, customers=50, seed=1, with_handbook_profiles=True).transactions
    pd.testing.assert_frame_equal(data.transactions, again)
    assert not data.transactions.equals(hb.generate(days=3, customers=50, seed=1).transactions)


def test_customers_use_only_terminals_within_radius() -> None:
    data = hb.generate(days=10, customers=300, seed=2)
    tx = data.transactions
    c = data.customers.set_index("CUSTOMER_ID").loc[tx.CUSTOMER_ID]
    t = data.terminals.set_index("TERMINAL_ID").loc[tx.TERMINAL_ID]
    dist = np.hypot(c.x_customer_id.to_numpy() - t.x_terminal_id.to_numpy(),
                    c.y_customer_id.to_numpy() - t.y_terminal_id.to_numpy())
    assert (dist < hb.DEFAULT_RADIUS).all()


@pytest.mark.parametrize("r", [1.0, 5.0, 12.5, 40.0, 150.0])
def test_grid_neighbour_search_equals_brute_force(r: float) -> None:
    rng = np.random.default_rng(0)
    cx, cy, tx, ty = rng.uniform(0, 100, (4, 400))
    offsets, idx = hb.terminals_within_radius(cx, cy, tx, ty, r)
    brute = np.sqrt((cx[:, None] - tx[None]) ** 2 + (cy[:, None] - ty[None]) ** 2) < r
    for i in range(len(cx)):
        assert np.array_equal(idx[offsets[i]:offsets[i + 1]], np.flatnonzero(brute[i]))


def test_handbook_statistics(sim: Simulation) -> None:
    tx = sim.transactions
    n = len(tx)
    terminals = sim.params.terminals
    counts = tx.TX_FRAUD_SCENARIO.value_counts().reindex(range(4), fill_value=0)

    tx_per_customer_day = n / (CUSTOMERS * DAYS)
    assert abs(tx_per_customer_day - EXPECTED_TX_PER_CUSTOMER_DAY) < TX_PER_CUSTOMER_DAY_TOLERANCE
    assert abs(HANDBOOK_TX_PER_CUSTOMER_DAY - EXPECTED_TX_PER_CUSTOMER_DAY) < TX_PER_CUSTOMER_DAY_TOLERANCE

    share_1 = counts[1] / n
    assert abs(share_1 / HANDBOOK_SCENARIO_1_SHARE - 1) < SCENARIO_1_TOLERANCE, share_1
    # Our generator draws compromises on every day (the handbook skipped its last day).
    expected_2 = HANDBOOK_SCENARIO_2_EXPOSURE_RATIO * _exposure(DAYS, 28, 2, terminals, DAYS)
    expected_3 = HANDBOOK_SCENARIO_3_EXPOSURE_RATIO * _exposure(DAYS, 14, 1, CUSTOMERS, DAYS)
    assert abs(counts[2] / n / expected_2 - 1) < SCENARIO_2_TOLERANCE, counts[2] / n
    assert abs(counts[3] / n / expected_3 - 1) < SCENARIO_3_TOLERANCE, counts[3] / n

    expected_rate = HANDBOOK_SCENARIO_1_SHARE + expected_2 + expected_3
    assert abs(tx.TX_FRAUD.mean() / expected_rate - 1) < SCENARIO_2_TOLERANCE
    # The same formula, at the handbook's own size, gives back the handbook's fraud rate.
    at_handbook_size = (HANDBOOK_SCENARIO_1_SHARE
                        + HANDBOOK_SCENARIO_2_EXPOSURE_RATIO * _exposure(183, 28, 2, 10_000, 182)
                        + HANDBOOK_SCENARIO_3_EXPOSURE_RATIO * _exposure(183, 14, 1, 5_000, 182))
    assert abs(at_handbook_size / HANDBOOK_FRAUD_RATE - 1) < 0.01


def test_scenario_3_multiplies_amounts_by_five(sim: Simulation) -> None:
    # A scenario-3 fraud is a customer's ordinary payment times 5: far above their genuine mean.
    tx = sim.transactions
    genuine_mean = tx[tx.TX_FRAUD == 0].groupby("CUSTOMER_ID").TX_AMOUNT.mean()
    s3 = tx[tx.TX_FRAUD_SCENARIO == 3]
    ratio = (s3.TX_AMOUNT / s3.CUSTOMER_ID.map(genuine_mean)).median()
    assert 3.5 < ratio < 6.5


# --- the raw-table contract ----------------------------------------------------------------

@pytest.mark.parametrize("table", RAW_TABLES, ids=lambda t: t.name)
def test_raw_tables_match_the_schema(sim: Simulation, table: RawTable) -> None:
    frame = sim.tables[table.name]
    assert list(frame.columns) == table.column_names
    assert len(frame) > 0
    for column in table.columns:
        values = frame[column.name]
        assert str(values.dtype) == PANDAS_DTYPES[column.pg_type], column.name
        if not column.nullable:
            assert values.notna().all(), column.name
        if column.pg_type == "text":
            assert pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"), column.name
    assert not frame.duplicated(list(table.key)).any()


def test_raw_table_order_and_names(sim: Simulation) -> None:
    assert list(sim.tables) == [t.name for t in RAW_TABLES]


def test_journals_sum_to_zero(sim: Simulation) -> None:
    ledger = sim.tables["ledger_entries"]
    sums = ledger.groupby(["journal_id", "currency"]).amount_minor.sum()
    assert (sums == 0).all()
    assert (ledger.groupby("journal_id").size() == 2).all()
    assert ledger.account.str.fullmatch(r"(customer|merchant):\d+|chargebacks").all()
    assert (ledger.loc[ledger.account == "chargebacks", "amount_minor"] <= 0).all()
    # Chargebacks are exactly the lost disputes.
    lost = sim.tables["dispute_outcomes"].query("status == 'lost'")
    charged = ledger.loc[ledger.account == "chargebacks", "payment_id"]
    assert set(charged) == set(lost.payment_id)


def test_webhook_lifecycle(sim: Simulation) -> None:
    ev = sim.tables["webhook_events"]
    tx = sim.transactions
    assert set(ev.event_type) == set(WEBHOOK_EVENT_TYPES)
    assert set(ev.processor) == {"stripe", "standard"}
    assert (ev.received_at >= ev.occurred_at).all()
    assert ((ev.received_at - ev.occurred_at) <= pd.Timedelta(minutes=2)).all()
    assert ev.dispute_id.notna().eq(ev.event_type.isin(["dispute.opened", "dispute.closed"])).all()
    assert (ev.amount_minor >= 0).all()
    # Every transaction is authorized at its own time, with the handbook's ids and amount.
    auth = ev[ev.event_type == "payment.authorized"].set_index("payment_id")
    assert len(auth) == len(tx)
    pid = "pay_" + tx.TRANSACTION_ID.astype(str)
    a = auth.loc[pid]
    assert (_utc(a.occurred_at) == tx.TX_DATETIME.to_numpy()).all()
    assert (a.customer_id.to_numpy() == tx.CUSTOMER_ID.astype(str).to_numpy()).all()
    assert (a.card_token.to_numpy() == ("tok_" + tx.CUSTOMER_ID.astype(str)).to_numpy()).all()
    assert (a.amount_minor.to_numpy() == np.rint(tx.TX_AMOUNT.to_numpy() * 100)).all()
    expected_processor = np.where(tx.TERMINAL_ID.to_numpy() % 2 == 0, "stripe", "standard")
    assert (a.processor.to_numpy() == expected_processor).all()
    # Later events of a payment happen after its authorization.
    later = ev[ev.event_type != "payment.authorized"]
    assert (_utc(later.occurred_at) > _utc(auth.loc[later.payment_id, "occurred_at"])).all()
    captured = later[later.event_type == "payment.captured"]
    lag = _utc(captured.occurred_at) - _utc(auth.loc[captured.payment_id, "occurred_at"])
    assert (lag >= pd.Timedelta(minutes=1)).all() and (lag <= pd.Timedelta(minutes=10)).all()
    # ~1% of genuine payments are refunded (4-sigma binomial band).
    refunded = ev.payment_id[ev.event_type == "payment.refunded"].nunique()
    genuine = (tx.TX_FRAUD == 0).sum()
    assert abs(refunded / genuine - 0.01) < 4 * np.sqrt(0.01 * 0.99 / genuine) + 0.002  # + late refunds dropped


def test_nothing_lands_after_as_of(sim: Simulation) -> None:
    for table in RAW_TABLES:
        frame = sim.tables[table.name]
        for column in table.columns:
            if column.pg_type == "timestamptz":
                assert (frame[column.name] < sim.as_of).all(), (table.name, column.name)
    # ... while the truth knows of frauds whose dispute had not closed yet.
    closed = set(sim.tables["dispute_outcomes"].payment_id)
    frauds = "pay_" + sim.transactions.loc[sim.transactions.TX_FRAUD == 1, "TRANSACTION_ID"].astype(str)
    assert not set(frauds) <= closed


def test_labels_arrive_days_after_the_payment(sim: Simulation) -> None:
    tx = sim.transactions.assign(payment_id=lambda d: "pay_" + d.TRANSACTION_ID.astype(str)).set_index("payment_id")
    disputes = sim.tables["dispute_outcomes"]
    paid = tx.loc[disputes.payment_id, "TX_DATETIME"].to_numpy()
    opened_after = _utc(disputes.opened_at) - paid
    label_delay = _utc(disputes.closed_at) - paid
    assert (opened_after >= pd.Timedelta(days=1)).all() and (opened_after <= pd.Timedelta(days=10)).all()
    closed_after = disputes.closed_at - disputes.opened_at
    assert (closed_after >= pd.Timedelta(days=1)).all() and (closed_after <= pd.Timedelta(days=14)).all()
    median_days = pd.Series(label_delay).median() / pd.Timedelta(days=1)
    assert 5 <= median_days <= 10  # "labels arrive about a week later"
    # Outcomes agree with the truth: frauds are lost chargebacks, the rest won.
    fraud = tx.loc[disputes.payment_id, "TX_FRAUD"].to_numpy() == 1
    assert (disputes.fraud_confirmed.to_numpy() == fraud).all()
    assert (disputes.status.to_numpy() == np.where(fraud, "lost", "won")).all()
    assert (disputes.reason_code.to_numpy() == np.where(fraud, "10.4", "13.1")).all()
    assert 0 < (~fraud).sum() < 0.5 * fraud.sum()  # genuine disputes are rare
    # Every fraud older than the longest possible delay has its label.
    old = tx[(tx.TX_FRAUD == 1) & (tx.TX_DATETIME.dt.tz_localize("UTC") < sim.as_of - pd.Timedelta(days=25))]
    assert set(old.index) <= set(disputes.payment_id)
    # The webhook stream tells the same story.
    ev = sim.tables["webhook_events"]
    closed_events = ev[ev.event_type == "dispute.closed"].set_index("dispute_id")
    assert (_utc(closed_events.loc[disputes.dispute_id, "occurred_at"]) == _utc(disputes.closed_at)).all()


def test_kyc_records(sim: Simulation) -> None:
    kyc = sim.tables["kyc_records"]
    assert set(kyc.customer_id) == {str(i) for i in range(CUSTOMERS)}  # every customer, paying or not
    assert (kyc.verified_at < pd.Timestamp(sim.params.start_date, tz="UTC")).all()
    assert kyc.country.str.fullmatch(r"[A-Z]{2}").all()
    eu = {"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT",
          "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"}
    assert kyc.country.isin(eu).mean() > 0.85
    assert kyc.pep.mean() < 0.03
    assert (kyc.sanctions_screening == "hit").mean() < 0.01
    assert set(kyc.sanctions_screening) <= {"clear", "hit"}
    assert set(kyc.verification_level) <= {"basic", "standard", "enhanced"}
    assert set(kyc.document_type) <= {"passport", "id_card", "driving_licence"}
    assert (kyc.loc[kyc.pep, "verification_level"] == "enhanced").all()


# --- credit ----------------------------------------------------------------------------------

def _pd_of(apps: pd.DataFrame, **changes: np.ndarray) -> np.ndarray:
    cols = {
        "n_delinquencies": apps.n_delinquencies.to_numpy(),
        "debt_to_income": apps.debt_to_income.to_numpy(),
        "utilization": apps.utilization.to_numpy(),
        "annual_income_eur": apps.annual_income_minor.to_numpy() / 100,
        "credit_history_months": apps.credit_history_months.to_numpy(),
    }
    cols.update(changes)
    return default_probability(**cols)


def test_credit_pd_is_monotone_other_things_equal(sim: Simulation) -> None:
    apps = sim.tables["credit_applications"]
    base = _pd_of(apps)
    assert (_pd_of(apps, n_delinquencies=apps.n_delinquencies.to_numpy() + 1) > base).all()
    assert (_pd_of(apps, debt_to_income=apps.debt_to_income.to_numpy() + 0.1) > base).all()
    assert (_pd_of(apps, utilization=np.minimum(apps.utilization.to_numpy() + 0.1, 1.0)) >= base).all()
    assert (_pd_of(apps, annual_income_eur=apps.annual_income_minor.to_numpy() / 100 * 1.2) < base).all()
    assert (_pd_of(apps, credit_history_months=apps.credit_history_months.to_numpy() + 12) < base).all()
    # ... and within the data, the default rate rises with delinquencies.
    outcomes = sim.tables["credit_outcomes"].merge(apps, on="application_id")
    by_delinquency = outcomes.groupby(outcomes.n_delinquencies.clip(upper=2)).true_default_probability.mean()
    assert by_delinquency.is_monotonic_increasing


def test_credit_outcomes(sim: Simulation) -> None:
    apps = sim.tables["credit_applications"].set_index("application_id")
    out = sim.tables["credit_outcomes"]
    start = pd.Timestamp(sim.params.start_date, tz="UTC")
    assert 0.8 * CUSTOMERS < len(apps) < 1.2 * CUSTOMERS  # ~1 application per customer
    assert ((apps.applied_at >= start - pd.Timedelta(days=365)) & (apps.applied_at < sim.as_of)).all()
    assert (_utc(out.observed_at) == _utc(apps.loc[out.application_id, "applied_at"] + pd.Timedelta(days=90))).all()
    # Only outcomes observed by as_of land, and all of those do.
    assert len(out) == (apps.applied_at + pd.Timedelta(days=90) < sim.as_of).sum()
    # The recorded oracle is the model's PD of the application's attributes.
    expected = _pd_of(apps.loc[out.application_id].reset_index())
    assert np.allclose(out.true_default_probability.to_numpy(), expected)
    assert 0.08 <= out.true_default_probability.mean() <= 0.12
    assert 0.06 <= out.defaulted.mean() <= 0.14
    assert apps.utilization.between(0, 1).all() and (apps.debt_to_income >= 0).all()
    assert TRUE_PD_MODEL.per_delinquency > 0


# --- derivation from any handbook-schema frame --------------------------------------------

def test_derive_accepts_string_ids(small: Simulation) -> None:
    tx = small.transactions
    as_str = tx.astype({"CUSTOMER_ID": str, "TERMINAL_ID": str})
    start = pd.Timestamp(small.params.start_date, tz="UTC")
    known = np.arange(small.params.customers)
    a = derive_tables(tx, seed=small.params.seed, as_of=small.as_of, start=start, customer_ids=known)
    b = derive_tables(as_str, seed=small.params.seed, as_of=small.as_of, start=start, customer_ids=known)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)
        pd.testing.assert_frame_equal(a[name], small.tables[name], obj=name)


def test_period_is_inferred_from_the_frame(sim: Simulation) -> None:
    start, as_of = infer_period(sim.transactions)
    assert start == pd.Timestamp(sim.params.start_date, tz="UTC")
    assert as_of == sim.as_of


def test_derive_from_the_real_handbook_file(handbook_path: Path) -> None:
    df = pd.read_parquet(handbook_path, filters=[("TX_TIME_DAYS", "<", 3)])
    tables = derive_from_handbook(df, seed=0)
    for table in RAW_TABLES:
        assert list(tables[table.name].columns) == table.column_names
        assert not tables[table.name].duplicated(list(table.key)).any()
    ev = tables["webhook_events"]
    assert (ev.event_type == "payment.authorized").sum() == len(df)
    assert (ev.received_at < pd.Timestamp("2018-04-04", tz="UTC")).all()


def test_derive_rejects_a_frame_without_the_handbook_columns() -> None:
    with pytest.raises(ValueError, match="missing columns"):
        derive_tables(pd.DataFrame({"TRANSACTION_ID": [1]}))


# --- API ---------------------------------------------------------------------------------

def test_write_lands_every_table_and_a_manifest(small: Simulation, tmp_path: Path) -> None:
    info = write(small, tmp_path / "landing")
    out = tmp_path / "landing"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(info))
    assert manifest["seed"] == 3 and manifest["parameters"]["customers"] == 200
    assert manifest["as_of"] == small.as_of.isoformat()
    assert manifest["row_counts"]["transactions"] == len(small.transactions)
    assert manifest["fraud_rate"] == pytest.approx(small.transactions.TX_FRAUD.mean())
    for table in RAW_TABLES:
        back = pd.read_parquet(out / table.file_name)
        assert manifest["row_counts"][table.name] == len(back)
        pd.testing.assert_frame_equal(back, small.tables[table.name], obj=table.name)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "transactions.parquet"), small.transactions)
    assert not list(out.glob("*.tmp"))


def test_empty_tables_land_with_typed_columns(tmp_path: Path) -> None:
    # 20 customers and 40 terminals: few customers have a terminal within reach, a 2-day run
    # has no closed dispute yet.  The file must still carry the contract's column types.
    tiny = simulate(days=2, customers=20, seed=0)
    assert tiny.tables["dispute_outcomes"].empty
    assert len(tiny.tables["kyc_records"]) == 20
    write(tiny, tmp_path)
    for table in RAW_TABLES:
        assert pq.read_schema(tmp_path / table.file_name).remove_metadata().equals(arrow_schema(table.name))


def test_preset_fixes_the_size_whatever_the_cli_defaults() -> None:
    params = resolve_params(days=30, customers=5000, seed=42, terminals=None, preset="handbook")
    assert (params.days, params.customers, params.terminals, params.start_date) == (183, 5000, 10_000, "2018-04-01")
    assert dict(PRESETS["handbook"])["terminals"] == 10_000
    default = resolve_params(days=10, customers=100, seed=1)
    assert default.terminals == 200 and default.start_date == "2018-04-01"
    with pytest.raises(ValueError):
        resolve_params(days=10, customers=100, seed=1, preset="nope")
    with pytest.raises(ValueError):
        resolve_params(days=None, customers=100, seed=1)


def test_schema_tables_all_have_time_columns() -> None:
    # The realism rule filters on each table's time column: it must be a timestamp.
    for table in RAW_TABLES_BY_NAME.values():
        assert {c.name: c.pg_type for c in table.columns}[table.time_column] == "timestamptz"


# --- injected drift (riskloop.simulator.drift) ----------------------------------------------

DRIFT_FROM = "2018-04-15"  # day 14 of a 20-day simulation from 2018-04-01


def _split(tx: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    before = tx["TX_DATETIME"] < pd.Timestamp(DRIFT_FROM)
    return (tx[before].drop(columns="TRANSACTION_ID").reset_index(drop=True),
            tx[~before].drop(columns="TRANSACTION_ID").reset_index(drop=True))


def test_amount_shift_scales_every_amount_from_the_date_and_nothing_before(small: Simulation) -> None:
    drifted = simulate(days=20, customers=200, seed=3, drift="amount-shift", drift_from=DRIFT_FROM, drift_factor=3)
    base_before, base_after = _split(small.transactions)
    before, after = _split(drifted.transactions)
    pd.testing.assert_frame_equal(before, base_before)
    assert len(after) == len(base_after) > 0
    np.testing.assert_allclose(after["TX_AMOUNT"], np.round(base_after["TX_AMOUNT"] * 3, 2))
    pd.testing.assert_frame_equal(after.drop(columns="TX_AMOUNT"), base_after.drop(columns="TX_AMOUNT"))
    # the raw feeds carry it: authorised amounts after the date are three times larger
    auth = drifted.tables["webhook_events"].query("event_type == 'payment.authorized'")
    late = auth["occurred_at"] >= pd.Timestamp(DRIFT_FROM, tz="UTC")
    base = small.tables["webhook_events"].query("event_type == 'payment.authorized'")
    assert auth.loc[late, "amount_minor"].median() == pytest.approx(
        3 * base.loc[base["occurred_at"] >= pd.Timestamp(DRIFT_FROM, tz="UTC"), "amount_minor"].median(), rel=0.01)
    assert auth.loc[~late, "amount_minor"].median() == base.loc[
        base["occurred_at"] < pd.Timestamp(DRIFT_FROM, tz="UTC"), "amount_minor"].median()
    assert drifted.params.drift == "amount-shift" and drifted.params.drift_from == DRIFT_FROM
    assert simulate(days=20, customers=200, seed=3, drift="amount-shift", drift_from=DRIFT_FROM,
                    drift_factor=3).transactions.equals(drifted.transactions)


def test_new_fraud_pattern_adds_night_card_testing_only_after_the_date(small: Simulation, tmp_path: Path) -> None:
    from riskloop.simulator.drift import CARD_TESTING_AMOUNT, CARD_TESTING_BURST, CARD_TESTING_SCENARIO

    drifted = simulate(days=20, customers=200, seed=3, drift="new-fraud-pattern", drift_from=DRIFT_FROM)
    tx = drifted.transactions
    assert (tx["TRANSACTION_ID"].to_numpy() == np.arange(len(tx))).all()
    assert tx["TX_TIME_SECONDS"].is_monotonic_increasing
    before, _ = _split(tx)
    pd.testing.assert_frame_equal(before, _split(small.transactions)[0])
    new = tx[tx["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO]
    n_days = 20 - 14
    assert new["TX_TIME_DAYS"].min() == 14 and new["TX_TIME_DAYS"].nunique() == n_days
    assert len(tx) == len(small.transactions) + len(new)
    assert (new["TX_FRAUD"] == 1).all()
    assert new["TX_AMOUNT"].between(*CARD_TESTING_AMOUNT).all()
    assert (new["TX_DATETIME"].dt.hour < 7).all()  # night, the flag the marts call is_night
    bursts = new.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"]).size()
    assert bursts.between(*CARD_TESTING_BURST).all() and len(bursts) == n_days  # one card a day at 200 customers
    # every feed derives from it: each card test is authorised and disputed as fraud
    info = write(drifted, tmp_path)
    assert info["fraud_scenario_counts"]["4"] == len(new)
    assert info["parameters"]["drift"] == "new-fraud-pattern" and info["parameters"]["drift_from"] == DRIFT_FROM
    ids = {f"pay_{i}" for i in new["TRANSACTION_ID"]}
    events = drifted.tables["webhook_events"]
    assert ids <= set(events.loc[events["event_type"] == "payment.authorized", "payment_id"])
    assert set(drifted.tables["dispute_outcomes"]["payment_id"]) & ids  # those whose label arrived in time
    assert "4" not in json.loads(json.dumps(write(small, tmp_path / "plain")))["fraud_scenario_counts"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"drift": "gremlins", "drift_from": DRIFT_FROM}, "unknown drift"),
    ({"drift": "amount-shift"}, "needs drift_from"),
    ({"drift_from": DRIFT_FROM}, "no drift kind"),
    ({"drift": "amount-shift", "drift_from": "2018-04-01"}, "after the first simulated day"),
    ({"drift": "amount-shift", "drift_from": "2018-04-21"}, "before the end"),
    ({"drift": "amount-shift", "drift_from": "soon"}, "not a date"),
    ({"drift": "amount-shift", "drift_from": DRIFT_FROM, "drift_factor": 1.0}, "factor"),
])
def test_bad_drift_options_are_refused_before_generating(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_params(days=20, customers=200, seed=3, **kwargs)


def test_cli_simulate_with_drift(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from riskloop.cli import app

    out = CliRunner().invoke(app, ["simulate", "--days", "20", "--customers", "200", "--seed", "3", "--out",
                                   str(tmp_path), "--drift", "amount-shift", "--drift-from", DRIFT_FROM,
                                   "--drift-factor", "2"])
    assert out.exit_code == 0, out.output
    params = json.loads((tmp_path / "manifest.json").read_text())["parameters"]
    assert (params["drift"], params["drift_from"], params["drift_factor"]) == ("amount-shift", DRIFT_FROM, 2.0)
    assert params["applications_per_customer"] == 1.0
    bad = CliRunner().invoke(app, ["simulate", "--days", "20", "--customers", "200", "--out", str(tmp_path / "x"),
                                   "--drift", "amount-shift"])
    assert bad.exit_code == 2 and "needs drift_from" in bad.output and not (tmp_path / "x").exists()


def test_cli_simulate_applications_per_customer(tmp_path: Path) -> None:
    """--applications-per-customer reaches the landed credit feed (and the manifest)."""
    from typer.testing import CliRunner

    from riskloop.cli import app

    args = ["simulate", "--days", "5", "--customers", "200", "--seed", "3"]
    out = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x6"), "--applications-per-customer", "6"])
    assert out.exit_code == 0, out.output
    manifest = json.loads((tmp_path / "x6" / "manifest.json").read_text())
    assert manifest["parameters"]["applications_per_customer"] == 6.0
    apps = pd.read_parquet(tmp_path / "x6" / "credit_applications.parquet")
    assert len(apps) == manifest["row_counts"]["credit_applications"]
    assert abs(len(apps) - 6 * 200) < 4 * (6 * 200) ** 0.5  # Poisson(6) per customer
    assert apps.groupby("customer_id").size().max() > 1  # repeat applicants
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "neg"), "--applications-per-customer", "-1"])
    assert bad.exit_code == 2 and not (tmp_path / "neg").exists()


def test_credit_age_band_is_data_with_a_configurable_true_bias() -> None:
    """Every applicant has an age band (constant per customer); with no bias it says nothing about risk,
    with ``credit_bias`` the under_35 band's true PD is higher; the payment feeds never change."""
    from riskloop.simulator.credit import AGE_BANDS, DISADVANTAGED_BAND

    fair, biased = (simulate(days=20, customers=600, seed=4, credit_bias=b) for b in (0.0, 1.5))
    for name in fair.tables:
        if not name.startswith("credit_"):
            pd.testing.assert_frame_equal(fair.tables[name], biased.tables[name])
    for s in (fair, biased):
        apps = s.tables["credit_applications"]
        assert set(apps.age_band) == set(AGE_BANDS) and apps.groupby("customer_id").age_band.nunique().max() == 1
    assert (fair.tables["credit_applications"].age_band.to_numpy()
            == biased.tables["credit_applications"].age_band.to_numpy()).all()

    def pd_by_band(s: Simulation) -> pd.Series:
        apps = s.tables["credit_applications"]
        return pd.Series(_pd_of(apps), index=apps.age_band.to_numpy()).groupby(level=0).mean()

    fair_pd, biased_pd = pd_by_band(fair), pd_by_band(biased)
    others = [b for b in AGE_BANDS if b != DISADVANTAGED_BAND]
    assert fair_pd[DISADVANTAGED_BAND] < 1.5 * fair_pd[others].min()  # no bias: no band far riskier
    assert biased_pd[DISADVANTAGED_BAND] > 2 * biased_pd[others].max()
