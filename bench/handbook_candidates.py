"""Is a candidate fraud input worth building into the marts, Feast and serving? Measured first.

Runs the chapter 5 protocol of `riskloop benchmark handbook` (`training.benchmark.run_protocol`:
the same folds, label rules, fit and metrics) on the Feast point-in-time frame that
`bench/xgb_train.py --cache` keeps (every payment, `fraud_model_v1` + the request-time inputs),
for one named experiment at a time: validation folds first (the only ones a choice may look at),
then the test folds.

The candidate ratios (the request's amount over the customer's 30/7-day mean, 30-day maximum
and spread, as of just before the payment) have since become product features: the Feast
on-demand view ``customer_amount_ratios`` in ``fraud_model_v1``, so `riskloop benchmark handbook`
now reads them from Feast itself. Here they are computed, with the same function
(``riskloop.features.amount_features.amount_ratios``), on a frame cached before they existed.

    RISKLOOP_HOME=/tmp/rl-feastpit RISKLOOP_PG_PORT=59432 RISKLOOP_MLFLOW_PORT=59000 \\
        .venv/bin/python bench/handbook_candidates.py --cache /tmp/rl-feastpit/train-all.parquet \\
        baseline "baseline+ratios" "baseline+ratios, wider trees"

(The database is read only for the reported frauds: `riskloop.features.datasets.known_frauds`.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from riskloop.core.config import get_settings
from riskloop.features import amount_features, datasets
from training import benchmark

ID_COLUMNS = ("transaction_id", "customer_id", "terminal_id", "event_timestamp", "is_fraud", "fraud_known_at")
RATIOS = list(amount_features.FEATURES)
SELECTED = {"max_depth": 3, "n_estimators": 100, "learning_rate": 0.1}  # what the benchmark's grid selects
WIDER = {"max_depth": 4, "n_estimators": 300, "learning_rate": 0.05}
EXPERIMENTS: dict[str, tuple[bool, dict]] = {  # name: (with the candidate ratios, XGBoost parameters)
    "baseline": (False, SELECTED),
    "baseline, class weight 5": (False, {**SELECTED, "scale_pos_weight": 5}),
    "baseline, wider trees": (False, WIDER),
    "baseline+ratios": (True, SELECTED),
    "baseline+ratios, wider trees": (True, WIDER),
}


def with_candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """The ratios, by their one definition (+1 in the denominators: no history, no spread)."""
    return frame.drop(columns=[c for c in RATIOS if c in frame.columns]).assign(
        **amount_features.amount_ratios(frame))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="bench/xgb_train.py's --cache Parquet file")
    parser.add_argument("experiments", nargs="*", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    protocols = benchmark.handbook_protocols()
    folds = [w for name in ("chapter5_validation", "chapter5_test") for w in protocols[name]]
    frame = pd.read_parquet(args.cache)
    keep = np.zeros(len(frame), dtype=bool)
    for start, end in benchmark.needed_windows(folds):  # event_timestamp is tx_at - 1 µs
        keep |= ((frame["event_timestamp"] >= start - pd.Timedelta(microseconds=1))
                 & (frame["event_timestamp"] < end)).to_numpy()
    frame = with_candidates(frame[keep].reset_index(drop=True))
    for col in ("event_timestamp", "fraud_known_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    known = datasets.known_frauds(get_settings(), max(w.test_end for w in folds))
    baseline = [c for c in frame.columns if c not in ID_COLUMNS and c not in RATIOS]
    for name in args.experiments:
        ratios, params = EXPERIMENTS[name]
        features = baseline + (RATIOS if ratios else [])
        load, t0 = os.getloadavg()[0], time.perf_counter()
        out: dict = {"experiment": name, "inputs": len(features), "params": params}
        for protocol in ("chapter5_validation", "chapter5_test"):
            res = benchmark.run_protocol(frame, protocols[protocol], known, features, params, 42)
            out[protocol] = {m: round(res[m], 4) for m in benchmark.METRICS}
        print(json.dumps({**out, "seconds": round(time.perf_counter() - t0, 1), "load_avg_1m": load}), flush=True)


if __name__ == "__main__":
    main()
