"""The handbook benchmark: its protocol dates, the import path, and late labels never used early.

The import test runs the real road (derive → landing → ingest → contracts → dbt → Feast) on a
small slice of the handbook file (45 days, a tenth of the customers) in a warehouse of its own.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from riskloop.models import split
from training import benchmark


def utc(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


# --- protocol arithmetic (no stack) ---------------------------------------------------------

def test_chapter3_split_is_the_handbooks() -> None:
    (w,) = benchmark.handbook_protocols()["chapter3"]
    # train 2018-07-25..07-31, delay 08-01..08-07, test 2018-08-08..08-14 (ends exclusive)
    assert (w.train_start, w.train_end, w.test_start, w.test_end) == (
        utc("2018-07-25"), utc("2018-08-01"), utc("2018-08-08"), utc("2018-08-15"))
    assert w.label_cutoff == w.test_start  # labels as known when the model goes live


def test_chapter5_folds_are_the_handbooks() -> None:
    protocols = benchmark.handbook_protocols()
    test = protocols["chapter5_test"]
    assert [w.train_start for w in test] == [utc(d) for d in ("2018-08-15", "2018-08-08", "2018-08-01", "2018-07-25")]
    for w in test + protocols["chapter5_validation"]:
        assert w.train_end - w.train_start == pd.Timedelta(days=7)
        assert w.test_start - w.train_end == pd.Timedelta(days=7)  # the delay block
        assert w.test_end - w.test_start == pd.Timedelta(days=7)
    # Validation = test folds moved back by delay + test (start_date_training - 14 days).
    valid = protocols["chapter5_validation"]
    assert [w.train_start for w in valid] == [utc(d) for d in ("2018-07-11", "2018-07-04", "2018-06-27", "2018-06-20")]
    # No validation fold tests on a day any test fold tests on: selection never sees test data.
    assert max(w.test_end for w in valid) <= min(w.test_start for w in test)
    # The one point-in-time join covers exactly what the folds read.
    assert benchmark.needed_windows(test + valid) == [(utc("2018-06-20"), utc("2018-09-05"))]
    assert benchmark.needed_windows(protocols["chapter3"]) == [
        (utc("2018-07-25"), utc("2018-08-01")), (utc("2018-08-08"), utc("2018-08-15"))]


def test_windows_from_matches_fraud_windows() -> None:
    by_end = split.fraud_windows(utc("2018-07-01"), utc("2018-08-21 23:00"))
    assert split.windows_from(by_end.train_start) == by_end
    assert split.windows_from("2018-07-25") == split.windows_from(utc("2018-07-25"))  # naive = UTC
    assert len(benchmark.param_grid(benchmark.HANDBOOK_GRID)) == 18


def test_selection_tries_the_handbook_grid_then_the_wider_points() -> None:
    points = benchmark.selection_candidates()
    assert points[:18] == benchmark.param_grid(benchmark.HANDBOOK_GRID)  # grid order kept: ties go to it
    assert points[18:] == [{"learning_rate": 0.05, "max_depth": d, "n_estimators": 300} for d in (4, 6)]
    # A point already in the grid is not tried twice.
    again = benchmark.selection_candidates({"max_depth": [4], "n_estimators": [300], "learning_rate": [0.05]})
    assert again == [{"learning_rate": 0.05, "max_depth": 4, "n_estimators": 300},
                     {"learning_rate": 0.05, "max_depth": 6, "n_estimators": 300}]


# --- the import path, on a slice of the real file ---------------------------------------------

SLICE_DAYS = 45


@pytest.fixture(scope="module")
def imported(stack_env: dict[str, str], handbook_path: Path, tmp_path_factory: pytest.TempPathFactory):
    from fixtures_marts import isolated_settings

    from riskloop.ops.handbook import import_handbook, is_imported

    tx = pd.read_parquet(handbook_path, filters=[("TX_TIME_DAYS", "<", SLICE_DAYS)])
    tx = tx[tx["CUSTOMER_ID"].astype(int) % 10 == 0].reset_index(drop=True)
    path = tmp_path_factory.mktemp("handbook") / "slice.parquet"
    tx.to_parquet(path, index=False)
    settings = isolated_settings("riskloop_t_handbook")
    assert not is_imported(settings, path)
    result = import_handbook(settings, path, landing_dir=path.parent / "landing")
    return settings, tx, path, result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_import_lands_the_file_through_ingest_dbt_and_feast(imported) -> None:
    from riskloop.core import db
    from riskloop.features import datasets
    from riskloop.features.store import feature_store
    from riskloop.ops.handbook import is_imported

    settings, tx, path, result = imported
    assert result.transactions == len(tx) and result.frauds == int(tx["TX_FRAUD"].sum())
    assert set(result.seconds) == {"derive", "load_raw", "contracts", "dbt_build", "feast"}
    # The handbook import derives a lender's application flow, several per card customer (Poisson
    # mean HANDBOOK_APPLICATIONS_PER_CUSTOMER), all the way to the credit mart.
    from riskloop.ops.handbook import HANDBOOK_APPLICATIONS_PER_CUSTOMER

    customers = tx["CUSTOMER_ID"].nunique()
    apps = result.raw_rows["credit_applications"]
    assert abs(apps - HANDBOOK_APPLICATIONS_PER_CUSTOMER * customers) < 4 * (HANDBOOK_APPLICATIONS_PER_CUSTOMER
                                                                              * customers) ** 0.5
    assert is_imported(settings, path)
    with db.connect(settings) as conn:
        n, ids = conn.execute("select count(*), count(distinct transaction_id) from marts.fct_transactions").fetchone()
        contract_ok = conn.execute("select success from raw.contract_runs order by run_at desc limit 1").fetchone()[0]
        credit_rows, applicants = conn.execute(
            "select count(*), count(distinct customer_id) from marts.credit_features").fetchone()
        frauds_known = conn.execute("select count(*) from marts.fct_transactions where is_fraud = 1").fetchone()[0]
    assert n == ids == len(tx)
    assert contract_ok
    assert credit_rows == apps and applicants <= customers and credit_rows > 4 * applicants
    # Labels that had not arrived by the end of the file are not in the mart (yet).
    assert 0 < frauds_known <= int(tx["TX_FRAUD"].sum())

    store = feature_store(settings)
    start = utc("2018-04-01")
    frame = datasets.fraud_dataset(store, [(start + pd.Timedelta(days=31), start + pd.Timedelta(days=33))])
    assert len(frame) == int(tx["TX_TIME_DAYS"].isin([31, 32]).sum())
    # Every customer here paid within 30 days: the point-in-time join found their spending row.
    assert frame["customer_nb_tx_30d"].notna().mean() > 0.95
    assert frame["terminal_risk_7d"].notna().mean() > 0.95


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_late_label_is_not_used_before_it_arrives(imported) -> None:
    """A fraud reported after the training cut-off is genuine for that training run, and a
    terminal's risk counts it only from the first day after its report."""
    from riskloop.features import datasets
    from riskloop.features.store import feature_store

    settings, _, _, _ = imported
    windows = split.windows_from("2018-04-20")  # train 04-20..04-26, cut-off 05-04
    frame = datasets.fraud_dataset(feature_store(settings), [(windows.train_start, windows.test_end)])
    train, _ = split.split_fraud(frame, windows)
    frauds = train[train["is_fraud"] == 1]
    late = frauds[frauds["fraud_known_at"] > windows.label_cutoff]
    early = frauds[frauds["fraud_known_at"] <= windows.label_cutoff]
    assert len(late) and len(early)  # the derived disputes close both before and after the cut-off
    assert (late["label"] == 0).all() and (early["label"] == 1).all()

    # Terminal risk, recomputed from the transactions with labels as known before each row's
    # day, equals what Feast joined; with final labels it would differ somewhere (a late label
    # that the features correctly ignored).
    from riskloop.core import db

    with db.connect(settings) as conn:
        cur = conn.execute("select terminal_id, tx_at, is_fraud, fraud_known_at from marts.fct_transactions")
        fct = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])
    fct["tx_at"] = pd.to_datetime(fct["tx_at"], utc=True)
    fct["fraud_known_at"] = pd.to_datetime(fct["fraud_known_at"], utc=True)
    sample = frame[frame["terminal_id"].isin(fct.loc[fct["is_fraud"] == 1, "terminal_id"])].head(1500)
    delay = pd.Timedelta(days=settings.label_delay_days)
    saw_late = False
    for row in sample.itertuples():
        day = row.event_timestamp.floor("D")
        t = fct[fct["terminal_id"] == row.terminal_id]
        inside = t[(t["tx_at"] >= day - delay - pd.Timedelta(days=30)) & (t["tx_at"] < day - delay)]
        known = ((inside["is_fraud"] == 1) & (inside["fraud_known_at"] < day)).sum()
        final = (inside["is_fraud"] == 1).sum()
        expected = known / len(inside) if len(inside) else 0.0
        assert row.terminal_risk_30d == pytest.approx(expected)
        saw_late |= bool(final > known)
    assert saw_late
