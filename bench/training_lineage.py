"""What the lineage of a training run costs: the five plots and the SHAP sample, by test-set size.

Every training run draws ROC, precision-recall, calibration, SHAP summary and score distribution
from its test predictions (`training.plots`). This times drawing and PNG-encoding them (no MLflow
upload) on synthetic test sets of the given sizes, with a 200-tree model on 24 inputs like the fraud
model's, so a reviewer of the training time knows what the lineage adds.

    .venv/bin/python bench/training_lineage.py --rows 60000 1000000

Prints one JSON line per size with wall seconds per plot and the load average at its start.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
import pandas as pd

from riskloop.models import classifier as model
from training import plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[60_000, 1_000_000])
    parser.add_argument("--features", type=int, default=24)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(args.features)]
    x_train = pd.DataFrame(rng.normal(size=(50_000, args.features)), columns=cols)
    y_train = (x_train["f0"] + 0.5 * x_train["f1"] + rng.normal(size=len(x_train)) > 3).astype(int)
    clf = model.fit(x_train, y_train, None, seed=1)
    for n in args.rows:
        x = pd.DataFrame(rng.normal(size=(n, args.features)), columns=cols)
        y = (x["f0"] + 0.5 * x["f1"] + rng.normal(size=n) > 3).astype(int).to_numpy()
        score = clf.predict_proba(x)[:, 1]
        load = os.getloadavg()[0]
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        contribs, rows = plots.shap_values(clf, x, seed=1)
        seconds["shap_values"] = time.perf_counter() - started
        draw = {"roc": lambda: plots.roc(y, score, "bench"),
                "precision_recall": lambda: plots.precision_recall(y, score, "bench"),
                "calibration": lambda: plots.calibration(y, score, "bench"),
                "shap_summary": lambda: plots.shap_summary(contribs, rows, "bench", seed=1),
                "score_distribution": lambda: plots.score_distribution(y, score, "bench")}
        for name, fn in draw.items():
            t = time.perf_counter()
            fn().savefig(io.BytesIO(), format="png", metadata={"Software": None})
            seconds[name] = time.perf_counter() - t
        print(json.dumps({"test_rows": n, "total_s": round(time.perf_counter() - started, 2),
                          "seconds": {k: round(v, 2) for k, v in seconds.items()}, "load_avg_1m": load}))


if __name__ == "__main__":
    main()
