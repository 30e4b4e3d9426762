"""XGBoost training time on the whole handbook file (1,754,155 payments), 2 threads.

The training set is the one riskloop trains on: `riskloop.features.datasets.fraud_dataset` over every
payment (Feast point-in-time join of `fraud_model_v1`, request-time inputs first, the on-demand
amount ratios included), labels = ``is_fraud``. Then `riskloop.models.classifier.fit` (``tree_method="hist"``,
``n_jobs=2``, riskloop's default parameters merged with ``--params``) is timed alone, ``--repeat``
times.

    RISKLOOP_HOME=/tmp/rl-feastpit RISKLOOP_PG_PORT=57432 RISKLOOP_MLFLOW_PORT=57000 \\
        .venv/bin/python bench/xgb_train.py --cache /tmp/rl-feastpit/train-all.parquet \\
        [--params '{"max_depth": 6, "n_estimators": 100}']

``--cache`` keeps the joined frame in a Parquet file so a re-run only fits, with no stack running
(a frame cached before the amount ratios existed gets them computed by their one definition).
Prints one JSON line per fit with its wall and CPU seconds and the load average at its start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd

from riskloop.features import datasets
from riskloop.models import classifier as model

# What a cached training frame holds beside the model's inputs.
NOT_INPUTS = frozenset({"transaction_id", "customer_id", "terminal_id", "event_timestamp", "is_fraud",
                        "fraud_known_at"})


def training_frame(cache: Path | None) -> tuple[pd.DataFrame, list[str]]:
    """The joined frame and the model's inputs. A cached frame needs no stack: its inputs are its
    columns; one cached before the amount ratios existed gets them from their one definition."""
    if cache is not None and cache.exists():
        from riskloop.features.amount_features import amount_ratios

        frame = pd.read_parquet(cache)
        for name, values in amount_ratios(frame).items():
            if name not in frame:
                frame[name] = values
        return frame, [c for c in frame.columns if c not in NOT_INPUTS]
    from riskloop.core.config import get_settings
    from riskloop.features.store import feature_store

    settings = get_settings()
    store = feature_store(settings)
    features = datasets.fraud_feature_names(store)
    lo, hi = datasets.transaction_range(settings)
    frame = datasets.fraud_dataset(store, [(lo, hi + pd.Timedelta(seconds=1))])
    if cache is not None:
        frame.to_parquet(cache)
    return frame, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--params", type=json.loads, default=None, help="JSON object overriding DEFAULT_PARAMS")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    frame, features = training_frame(args.cache)
    x, y = model.design_matrix(frame, features), frame["is_fraud"]
    for _ in range(args.repeat):
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(x, y, args.params)
        # CPU seconds (both threads) do not depend on how busy the machine is: on two idle cores
        # the wall time would be about cpu_seconds / 2.
        print(json.dumps({"rows": len(x), "features": len(features),
                          "params": model.effective_params(args.params, 42),
                          "fit_seconds": round(time.perf_counter() - t0, 2),
                          "cpu_seconds": round(time.process_time() - c0, 2), "load_avg_1m": load}), flush=True)


if __name__ == "__main__":
    main()
