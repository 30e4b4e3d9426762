"""Where one fraud decision's time goes, piece by piece, one call at a time (no concurrency).

Complements the open-loop ``serving_load.py``: on a shared 2-core machine the load test mostly
measures the neighbours, while these per-call costs barely move with the load. On the dev stack
(a champion registered, features materialized):

    .venv/bin/python bench/serving_breakdown.py --requests .riskloop/landing/score_requests.jsonl -n 2000

Prints one JSON line per step: median, p99 and mean in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np


def _stats(name: str, times_s: list[float]) -> dict[str, Any]:
    us = np.asarray(times_s) * 1e6
    return {"step": name, "n": len(us), "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1), "mean_us": round(float(us.mean()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import xgboost as xgb

    from riskloop.core.config import get_settings
    from riskloop.features.store import FRAUD_SERVICE, feature_store
    from serving.currencies import minor_to_major
    from serving.model import load_model
    from serving.online import OnlineFeatures, plan_inputs

    settings = get_settings()
    bodies = [json.loads(line) for line in args.requests.read_text().splitlines()[: args.n] if line.strip()]
    rows = [{"customer_id": b["customer_id"], "terminal_id": b["terminal_id"], "card_token": b["card_token"]} for b in bodies]
    amounts = [{"amount": minor_to_major(b["amount_minor"], b["currency"])} for b in bodies]
    model = load_model(settings.tracking_uri, settings.fraud_model_name, "champion")
    sdk = OnlineFeatures(lambda: feature_store(settings), FRAUD_SERVICE, read="sdk")
    sql = OnlineFeatures(lambda: feature_store(settings), FRAUD_SERVICE, read="sql", timeout_s=5.0)
    assert sdk.ensure() and sql.ensure()
    inputs = plan_inputs(model.features, sdk.offered)
    out = []

    times, vectors = [], []
    for r, a in zip(rows, amounts, strict=True):
        t = time.perf_counter()
        values, _ = sdk.fetch_row(inputs, r, a)
        times.append(time.perf_counter() - t)
        vectors.append([values.get(n, 1.0) for n in model.features])
    out.append(_stats("online read: Feast SDK get_online_features", times))

    async def direct() -> list[float]:
        await sql.connect()
        ts = []
        for r, a in zip(rows, amounts, strict=True):
            t = time.perf_counter()
            await sql.fetch_async(inputs, r, a)
            ts.append(time.perf_counter() - t)
        await sql.aclose()
        return ts

    out.append(_stats("online read: one prepared statement (asyncpg)", asyncio.run(direct())))

    xs = [np.asarray([v], dtype=np.float64) for v in vectors]
    booster, names = model.booster, list(model.features)
    for name, fn in [
        ("model: XGBoost inplace_predict", lambda x: booster.inplace_predict(x)),
        ("model: XGBoost DMatrix + pred_contribs approx (Saabas)", lambda x: booster.predict(
            xgb.DMatrix(x, feature_names=names, missing=np.nan), pred_contribs=True, approx_contribs=True)),
        ("model: XGBoost DMatrix + pred_contribs exact (TreeSHAP)", lambda x: booster.predict(
            xgb.DMatrix(x, feature_names=names, missing=np.nan), pred_contribs=True)),
        ("model: serving.trees score + Saabas contributions", lambda x: model.compiled.predict(x[0])),
    ]:
        times = []
        for x in xs[:500]:
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
        out.append(_stats(name, times))
    for line in out:
        print(json.dumps(line), flush=True)  # noqa: T201 - the benchmark's output


if __name__ == "__main__":
    main()
