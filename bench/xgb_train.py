"""XGBoost training time on the whole handbook file (1,754,155 payments), 2 threads.

The training set is the one riskloop trains on: `training.datasets.fraud_dataset` over every
payment (Feast point-in-time join of `fraud_model_v1`, request-time inputs first), labels =
``is_fraud``. Then `training.model.fit` (``tree_method="hist"``, ``n_jobs=2``, riskloop's
default parameters merged with ``--params``) is timed alone, ``--repeat`` times.

    RISKLOOP_HOME=/tmp/rl-feastpit RISKLOOP_PG_PORT=57432 RISKLOOP_MLFLOW_PORT=57000 \\
        .venv/bin/python bench/xgb_train.py --cache /tmp/rl-feastpit/train-all.parquet \\
        [--params '{"max_depth": 6, "n_estimators": 100}']

``--cache`` keeps the joined frame in a Parquet file so a re-run only fits. Prints one JSON
line per fit with its wall and CPU seconds and the load average at its start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd

from riskloop.config import get_settings
from riskloop.features import feature_store
from training import datasets, model


def training_frame(cache: Path | None) -> tuple[pd.DataFrame, list[str]]:
    settings = get_settings()
    store = feature_store(settings)
    features = datasets.fraud_feature_names(store)
    if cache is not None and cache.exists():
        return pd.read_parquet(cache), features
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
