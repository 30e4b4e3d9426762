"""Where `riskloop.models.classifier.fit`'s time goes on the handbook file: input, histogram sketch, boosting.

The same fit split into XGBoost's two native steps (``QuantileDMatrix``, then ``xgb.train`` with
riskloop's default parameters), each timed alone (wall and CPU seconds, load average at its
start), for each ``--max-bin``. The frame is the one `bench/xgb_train.py --cache` keeps.

    .venv/bin/python bench/xgb_fit_profile.py --cache /tmp/rl-feastpit/train-all.parquet [--max-bin 256 64]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from riskloop.models import classifier as model

ID_COLUMNS = ("transaction_id", "customer_id", "terminal_id", "event_timestamp", "is_fraud", "fraud_known_at")


def timed(step: str, fn: Callable[[], Any]) -> Any:
    load, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = fn()
    print(json.dumps({"step": step, "wall": round(time.perf_counter() - t0, 2),
                      "cpu": round(time.process_time() - c0, 2), "load_avg_1m": round(load, 1)}), flush=True)
    return result


def main() -> None:
    import xgboost as xgb

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--max-bin", type=int, nargs="+", default=[256, 64])
    args = parser.parse_args()
    frame = pd.read_parquet(args.cache)
    features = [c for c in frame.columns if c not in ID_COLUMNS]
    x = timed("design_matrix float64", lambda: model.design_matrix(frame, features))
    y = frame["is_fraud"].to_numpy()
    params = {**model.DEFAULT_PARAMS, **model.FIXED_PARAMS, "random_state": 42, "objective": "binary:logistic"}
    rounds = params.pop("n_estimators")
    for max_bin in args.max_bin:
        data = timed(f"QuantileDMatrix max_bin={max_bin}",
                     lambda: xgb.QuantileDMatrix(x, y, max_bin=max_bin, nthread=params["n_jobs"]))
        timed(f"train {rounds} rounds max_bin={max_bin}",
              lambda: xgb.train({**params, "max_bin": max_bin}, data, num_boost_round=rounds))


if __name__ == "__main__":
    main()
