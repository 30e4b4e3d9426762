"""Where the handbook benchmark's gap comes from: labels as known at training time vs all labels.

`riskloop benchmark handbook` trains each fold on the labels *known* when the model would go
live (a chargeback arrives 2-18 days after the payment here); the handbook trains on every
label of the training week. This re-runs the chapter 5 test folds with the parameters the
benchmark selected, once with each rule, on the same point-in-time features built by the
hand-written LATERAL join of `training.benchmark.reference_sql_dataset_seconds` (18 s instead of
Feast's 276 s; the first line checks it reproduces the benchmark's figures).

    RISKLOOP_HOME=/tmp/rl-bench RISKLOOP_PG_PORT=56100 RISKLOOP_MLFLOW_PORT=56101 \\
        .venv/bin/python bench/handbook_label_delay.py --params '{"learning_rate": 0.1, "max_depth": 3, "n_estimators": 100}'

The terminal risk features still use only labels known before their day (they come from dbt);
only the training labels change. Prints one JSON line per rule.
"""

from __future__ import annotations

import argparse
import json
import logging

import pandas as pd
import sqlalchemy as sa

from riskloop.core import db
from riskloop.core.config import get_settings
from riskloop.features import datasets
from riskloop.models import split
from training import benchmark

log = logging.getLogger("handbook_label_delay")

FEATURES = [f"customer_{k}_{w}" for k in ("nb_tx", "avg_amount") for w in ("1d", "7d", "30d")] + [
    f"terminal_{k}_{w}" for k in ("nb_tx", "risk") for w in ("1d", "7d", "30d")]


def sql_frame(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The columns of `riskloop.features.datasets.fraud_dataset`, joined just before each payment with the
    feature views' TTLs (30 days customer, 2 days terminal)."""
    cust = ", ".join(f for f in FEATURES if f.startswith("customer"))
    term = ", ".join(f for f in FEATURES if f.startswith("terminal"))
    query = f"""
        select t.transaction_id, t.customer_id, t.terminal_id, t.tx_at - interval '1 microsecond' as event_timestamp,
               t.amount, t.is_weekend, t.is_night, t.is_fraud, t.fraud_known_at, c.*, r.*
        from marts.fct_transactions t
        left join lateral (select {cust} from marts.customer_spending_features c
            where c.customer_id = t.customer_id and c.event_timestamp <= t.tx_at - interval '1 microsecond'
              and c.event_timestamp >= t.tx_at - interval '1 microsecond' - interval '30 days'
            order by c.event_timestamp desc limit 1) c on true
        left join lateral (select {term} from marts.terminal_risk_features r
            where r.terminal_id = t.terminal_id and r.event_timestamp <= t.tx_at - interval '1 microsecond'
              and r.event_timestamp >= t.tx_at - interval '1 microsecond' - interval '2 days'
            order by r.event_timestamp desc limit 1) r on true
        where t.tx_at >= timestamptz '{start.isoformat()}' and t.tx_at < timestamptz '{end.isoformat()}'"""
    eng = db.engine(get_settings())
    try:
        frame = pd.read_sql(sa.text(query), eng)
    finally:
        eng.dispose()
    for col in ("event_timestamp", "fraud_known_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame.sort_values(["event_timestamp", "transaction_id"], kind="mergesort").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="{}", help="XGBoost parameters (JSON), as selected by the benchmark.")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    params = json.loads(args.params)
    folds = benchmark.handbook_protocols()["chapter5_test"]
    (span,) = benchmark.needed_windows(folds)
    frame = sql_frame(*span)
    known = datasets.known_frauds(settings, max(w.test_end for w in folds))
    features = list(datasets.FRAUD_REQUEST_FEATURES) + FEATURES
    for rule, cutoff_days in (("known at go-live (benchmark)", None), ("every label (handbook)", 3650)):
        rule_folds = [split.windows_from(w.train_start, label_cutoff_days=cutoff_days) for w in folds]
        res = benchmark.run_protocol(frame, rule_folds, known, features, params, args.seed)
        print(json.dumps({"rule": rule, **{m: round(res[m], 4) for m in benchmark.METRICS},
                          **{f"{m}_std": round(res[f"{m}_std"], 4) for m in benchmark.METRICS},
                          "train_frauds_used": [f["train_frauds_known"] for f in res["folds"]],
                          "train_frauds_final": [f["train_frauds_final"] for f in res["folds"]]}))


if __name__ == "__main__":
    main()
