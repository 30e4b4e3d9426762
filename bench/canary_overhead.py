"""What canary and shadow modes add to one fraud decision, in process (no HTTP, no database).

Canary mode adds one routing draw per request (``serving.routing.bucket``: blake2b of the
transaction id); shadow mode adds one more model evaluation (``LoadedModel.predict`` on the
compiled trees) and the shadow record. Both are measured here on a model of the served shape
(24 inputs, the training defaults: 200 trees of depth 4), per call, over many calls:

    .venv/bin/python bench/canary_overhead.py [--n 20000] [--trees 200]

Prints one JSON line: p50 / p99 in microseconds of each step, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _timings(fn, n: int) -> dict[str, float]:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        out[i] = time.perf_counter_ns() - t0
    return {"p50_us": round(float(np.percentile(out, 50)) / 1000, 2),
            "p99_us": round(float(np.percentile(out, 99)) / 1000, 2)}


def main() -> None:
    import xgboost as xgb

    from serving.model import LoadedModel
    from serving.routing import Routing, bucket
    from serving.trees import compile_booster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--trees", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 24))
    y = (x[:, 0] + rng.normal(size=5000) > 1.5).astype(int)
    names = [f"f{i}" for i in range(24)]
    booster = xgb.train({"max_depth": 4, "eta": 0.1, "objective": "binary:logistic", "nthread": 1},
                        xgb.DMatrix(x, y, feature_names=names), num_boost_round=args.trees)
    model = LoadedModel(name="bench", alias="challenger", version="2", run_id=None, features=tuple(names),
                        booster=booster, compiled=compile_booster(booster))
    rows = [np.asarray([r], dtype=np.float64) for r in x[:1000]]
    ids = [f"tx-{i}" for i in range(args.n)]
    route = Routing(mode="canary", share=0.05, challenger=model)

    def shadow(i: int) -> None:
        t0 = time.perf_counter()
        score, _ = model.predict(rows[i % 1000])
        _ = {"alias": model.alias, "version": model.version, "score": score,
             "latency_ms": (time.perf_counter() - t0) * 1000.0}

    result = {
        "trees": args.trees, "n": args.n,
        "canary_routing_draw": _timings(lambda i: route.to_challenger(ids[i]), args.n),
        "bucket_only": _timings(lambda i: bucket(ids[i]), args.n),
        "effective_mode": _timings(lambda i: route.effective_mode, args.n),
        "shadow_score_and_record": _timings(shadow, args.n),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result))  # noqa: T201 - a benchmark's output


if __name__ == "__main__":
    main()
