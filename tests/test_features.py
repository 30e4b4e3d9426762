"""Feast on synthetic marts: apply, materialize, online reads, point-in-time joins."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from fixtures_marts import SyntheticMarts, isolated_settings, make_marts, write_marts

from riskloop.core import windows
from riskloop.core.config import Settings
from riskloop.features.amount_features import FEATURES as AMOUNT_FEATURES
from riskloop.features.amount_features import SOURCE_FIELDS as AMOUNT_SOURCES
from riskloop.features.amount_features import amount_ratios

pytestmark = pytest.mark.timeout(600)

CUSTOMER_FEATURES = [f"customer_{k}_{w}" for k in ("nb_tx", "avg_amount") for w in ("1d", "7d", "30d")] + [
    "customer_std_amount_30d", "customer_max_amount_30d"]
TERMINAL_FEATURES = [f"terminal_{k}_{w}" for k in ("nb_tx", "risk") for w in ("1d", "7d", "30d")] + [
    f"terminal_reported_{k}_{w}" for k in ("frauds", "risk") for w in ("7d", "14d", "28d")] + [
    "terminal_days_since_reported_fraud"]


@pytest.fixture(scope="module")
def applied(stack_env: dict[str, str]) -> tuple[Settings, SyntheticMarts]:
    from riskloop.features import store as features

    settings = isolated_settings("riskloop_t_features")
    marts = make_marts(days=30, customers=40, terminals=20, seed=1)
    write_marts(settings, marts)
    features.apply(settings)
    return settings, marts


def test_apply_registers_the_promised_names_and_is_idempotent(applied: tuple[Settings, SyntheticMarts]) -> None:
    from riskloop.features import store as features

    settings, _ = applied
    features.apply(settings)  # second apply: no error, nothing duplicated
    store = features.feature_store(settings)
    assert {fv.name for fv in store.list_feature_views()} == {"customer_spending", "terminal_risk",
                                                               "credit_application", "card_realtime",
                                                               "customer_realtime"}
    assert {e.name for e in store.list_entities()} >= {"customer", "terminal", "application", "card"}
    assert {fs.name for fs in store.list_feature_services()} == {"fraud_model_v1", "credit_model_v1"}
    assert {p.name for p in store.get_feature_service("fraud_model_v1").feature_view_projections} == {
        "customer_spending", "terminal_risk", "customer_amount_ratios", "card_realtime", "customer_realtime"}
    assert [v.name for v in store.list_on_demand_feature_views()] == ["customer_amount_ratios"]


def test_materialize_then_online_features_are_the_latest(applied: tuple[Settings, SyntheticMarts]) -> None:
    from riskloop.features import store as features

    settings, marts = applied
    # The Feast registry and online store are the session's, shared by every module: another one may
    # already have materialized these views to a later end, which would make a first incremental run
    # a no-op here. Reload this module's range (start=), then run incrementally: nothing new, no error.
    # (The incremental first run from end - ttl is what the ingest DAG does: tests/test_scheduler.py.)
    as_of = marts.as_of.to_pydatetime()
    features.materialize(settings, as_of, start=as_of - timedelta(days=60))
    features.materialize(settings, as_of)
    store = features.feature_store(settings)
    spending = marts.customer_spending_features.sort_values("event_timestamp", kind="mergesort")
    latest_c = spending.groupby("customer_id").tail(1).set_index("customer_id")
    risk = marts.terminal_risk_features.sort_values("event_timestamp", kind="mergesort")
    latest_t = risk.groupby("terminal_id").tail(1).set_index("terminal_id")
    customers, terminals = sorted(latest_c.index)[:5], sorted(latest_t.index)[:5]

    amounts = [12.5, 0.0, 80.0, 300.0, 1.25]  # the payment being scored: the on-demand view reads it
    card_of = marts.fct_transactions.drop_duplicates("customer_id").set_index("customer_id")["card_token"]
    cards = list(card_of.loc[customers])  # one card per customer in the synthetic marts
    online = store.get_online_features(
        features=store.get_feature_service("fraud_model_v1"),
        entity_rows=[{"customer_id": c, "terminal_id": t, "card_token": k, "amount": a}
                     for c, t, k, a in zip(customers, terminals, cards, amounts)],
    ).to_df()
    # the stream-fed views are materialized from their marts too: the card's latest windows
    card_windows = marts.card_realtime_windows.sort_values("event_timestamp", kind="mergesort")
    latest_k = card_windows.groupby("card_token").tail(1).set_index("card_token")
    card_features = windows.feature_names(windows.entity("card"))
    pd.testing.assert_frame_equal(online[card_features].reset_index(drop=True).astype(float),
                                  latest_k.loc[cards, card_features].reset_index(drop=True).astype(float))
    pd.testing.assert_frame_equal(
        online[CUSTOMER_FEATURES].reset_index(drop=True).astype(float),
        latest_c.loc[customers, CUSTOMER_FEATURES].reset_index(drop=True).astype(float))
    pd.testing.assert_frame_equal(
        online[TERMINAL_FEATURES].reset_index(drop=True).astype(float),
        latest_t.loc[terminals, TERMINAL_FEATURES].reset_index(drop=True).astype(float))
    # Feast's online on-demand values: the ratios of these amounts to the latest stored history.
    expected = pd.DataFrame(amount_ratios(latest_c.loc[customers].reset_index(drop=True).assign(amount=amounts)))
    assert (expected["amount_vs_customer_avg_30d"] > 0).sum() == 4  # not a comparison of NaNs or zeros
    pd.testing.assert_frame_equal(online[list(AMOUNT_FEATURES)].reset_index(drop=True).astype(float),
                                  expected[list(AMOUNT_FEATURES)].astype(float))


def test_historical_features_are_point_in_time_correct(applied: tuple[Settings, SyntheticMarts]) -> None:
    from riskloop.features import store as features

    settings, marts = applied
    store = features.feature_store(settings)
    spending = marts.customer_spending_features
    # For some feature rows, ask one second before and exactly at their timestamp.
    probes = spending.sort_values(["customer_id", "event_timestamp"]).groupby("customer_id").nth(3).head(10)
    before = probes[["customer_id", "event_timestamp"]].assign(
        event_timestamp=probes["event_timestamp"] - pd.Timedelta(seconds=1), probe="before")
    at = probes[["customer_id", "event_timestamp"]].assign(probe="at")
    entity_df = pd.concat([before, at], ignore_index=True).assign(terminal_id="t0000")
    entity_df["card_token"] = entity_df["customer_id"].map(
        marts.fct_transactions.drop_duplicates("customer_id").set_index("customer_id")["card_token"])
    entity_df["amount"] = 10.0 + 7.0 * entity_df.index.to_numpy()  # the payment's own amount (on-demand view)
    got = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("fraud_model_v1")).to_df()
    got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)

    # The expected value is the latest feature row at or before the entity timestamp (pandas as-of join).
    expected = pd.merge_asof(
        entity_df.sort_values("event_timestamp"), spending.sort_values("event_timestamp"),
        on="event_timestamp", by="customer_id", direction="backward", allow_exact_matches=True)
    key = ["customer_id", "event_timestamp"]
    merged = got.merge(expected, on=[*key, "probe"], suffixes=("", "_expected"))
    assert len(merged) == len(entity_df)
    for col in CUSTOMER_FEATURES:
        assert (merged[col].astype(float) == merged[f"{col}_expected"].astype(float)).all(), col
    # The on-demand ratios: the shared definition applied to the amount and the as-of row above.
    ratios = amount_ratios({"amount": merged["amount"], **{f: merged[f"{f}_expected"] for f in AMOUNT_SOURCES}})
    for col in AMOUNT_FEATURES:
        assert merged[col].notna().all() and np.allclose(merged[col], ratios[col], rtol=0, atol=1e-12), col
    # The card's real-time windows: its latest row at or before the entity time, within the view's 24 h TTL.
    card_features = windows.feature_names(windows.entity("card"))
    windows_at = pd.merge_asof(
        entity_df.sort_values("event_timestamp"), marts.card_realtime_windows.sort_values("event_timestamp"),
        on="event_timestamp", by="card_token", direction="backward", allow_exact_matches=True,
        tolerance=pd.Timedelta(hours=24))
    merged_k = got.merge(windows_at, on=[*key, "probe"], suffixes=("", "_expected"))
    assert merged_k[f"{card_features[0]}_expected"].notna().sum() >= 10  # the "at" probes at least
    for col in card_features:
        pd.testing.assert_series_equal(merged_k[col].astype(float), merged_k[f"{col}_expected"].astype(float),
                                       check_names=False)
    # A row stamped after the entity timestamp is never used: "before" never sees the probe row's count.
    probe_counts = probes.set_index("customer_id")["customer_nb_tx_30d"]
    early = merged[merged["probe"] == "before"].set_index("customer_id")
    assert (early["customer_nb_tx_30d"] < probe_counts.loc[early.index]).all()
