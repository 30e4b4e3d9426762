"""Cost and coverage of the realised-AP bootstrap interval (riskloop.models.metrics.average_precision_interval).

The monitor computes it on every run over the matured decisions, which can be millions of rows. Two
questions: how long does it take (against the row bootstrap through scikit-learn's sample weights,
which it replaces), and does the interval hold the population's AP as often as its 95 % says?

    .venv/bin/python bench/ap_interval.py --rows 10000 100000 1000000 --coverage-draws 300
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import average_precision_score

from riskloop.models.metrics import average_precision_interval


def sample(rng: np.random.Generator, n: int, fraud_rate: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < fraud_rate).astype(int)
    return y, rng.normal(1.2 * y, 1.0)  # frauds score one standard deviation higher


def sklearn_bootstrap(y: np.ndarray, s: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """The straightforward row bootstrap: one weighted scikit-learn AP per resample."""
    rng, n = np.random.default_rng(seed), len(y)
    draws = [average_precision_score(y, s, sample_weight=np.bincount(rng.integers(0, n, n), minlength=n))
             for _ in range(resamples)]
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(low), float(high)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--fraud-rate", type=float, default=0.02)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--sklearn-max-rows", type=int, default=100_000, help="skip the slow reference above this")
    ap.add_argument("--coverage-draws", type=int, default=300)
    ap.add_argument("--coverage-rows", type=int, default=2_000, help="~40 frauds at 2 %%: the noisy case")
    args = ap.parse_args()
    rng = np.random.default_rng(11)
    out: dict = {"fraud_rate": args.fraud_rate, "resamples": args.resamples, "timing": []}
    for n in args.rows:
        y, s = sample(rng, n, args.fraud_rate)
        t0 = time.perf_counter()
        low, high = average_precision_interval(y, s, resamples=args.resamples)
        ours = time.perf_counter() - t0
        row = {"rows": n, "frauds": int(y.sum()), "ap": round(float(average_precision_score(y, s)), 4),
               "interval": [round(low, 4), round(high, 4)], "seconds": round(ours, 3)}
        if n <= args.sklearn_max_rows:
            t0 = time.perf_counter()
            ref = sklearn_bootstrap(y, s, args.resamples)
            row.update(sklearn_seconds=round(time.perf_counter() - t0, 3), sklearn_interval=[round(v, 4) for v in ref])
        out["timing"].append(row)
        print(json.dumps(row), flush=True)  # noqa: T201 - a benchmark's report
    truth = float(average_precision_score(*sample(rng, 2_000_000, args.fraud_rate)))
    # The alert pages on the interval's top: truth above the top is the side a false page comes from.
    held = above = below = widths = 0.0
    for _ in range(args.coverage_draws):
        low, high = average_precision_interval(*sample(rng, args.coverage_rows, args.fraud_rate),
                                               resamples=args.resamples)
        held += low <= truth <= high
        above += truth > high
        below += truth < low
        widths += high - low
    k = args.coverage_draws
    out["coverage"] = {"rows": args.coverage_rows, "draws": k, "population_ap": round(truth, 4),
                       "share_holding_it": round(held / k, 3), "share_truth_above_top": round(above / k, 3),
                       "share_truth_below_bottom": round(below / k, 3), "mean_width": round(widths / k, 3)}
    print(json.dumps(out["coverage"]))  # noqa: T201


if __name__ == "__main__":
    main()
