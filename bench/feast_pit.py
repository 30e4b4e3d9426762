"""Building the handbook training set: riskloop's offline store vs Feast's stock store vs one SQL join.

Times, on the warehouse `riskloop import handbook` filled, the three ways of getting the
`fraud_model_v1` features as of just before each payment:

- ``riskloop``: `riskloop.features.datasets.fraud_dataset` through the repo's configured offline store
  (`riskloop.features.feast_offline.RiskloopPostgreSQLOfflineStore`), to a sorted, de-duplicated DataFrame;
- ``stock``: the same call with ``offline_store.type: postgres`` (Feast 0.67's own template);
- ``lateral_sql``: `training.benchmark.reference_sql_dataset_seconds`, one hand-written LATERAL
  query over the same entity rows fetched with SQLAlchemy.

    RISKLOOP_HOME=/tmp/rl-feastpit RISKLOOP_PG_PORT=57432 RISKLOOP_MLFLOW_PORT=57000 \\
        .venv/bin/python bench/feast_pit.py --rows all --rows benchmark [--stock]

``--rows all`` takes every payment (1,754,155 on the handbook file) as an entity row;
``--rows benchmark`` the weeks the handbook benchmark reads (737,289). Prints one JSON line per
measurement, with the load average at its start; checks both Feast paths return the same frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd
import yaml

from riskloop.core.config import get_settings
from riskloop.features import datasets
from riskloop.features.store import feature_store
from training import benchmark


def stock_store(settings):  # noqa: ANN001, ANN201 - feast types imported lazily
    """The repo's FeatureStore with Feast's own Postgres offline store instead of riskloop's."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    feature_store(settings)  # exports the RISKLOOP_FEAST_* variables the yaml expands
    repo = Path(settings.feature_repo)
    raw = yaml.safe_load(os.path.expandvars((repo / "feature_store.yaml").read_text()))
    raw["offline_store"]["type"] = "postgres"
    return FeatureStore(config=RepoConfig(repo_path=repo, **raw))


def windows_for(kind: str, settings) -> list[tuple[pd.Timestamp, pd.Timestamp]]:  # noqa: ANN001
    if kind == "all":
        lo, hi = datasets.transaction_range(settings)
        return [(lo, hi + pd.Timedelta(seconds=1))]
    return benchmark.needed_windows([w for f in benchmark.handbook_protocols().values() for w in f])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", action="append", choices=["all", "benchmark"], default=None)
    parser.add_argument("--stock", action="store_true", help="also time Feast's stock Postgres offline store")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    for kind in args.rows or ["all"]:
        windows = windows_for(kind, settings)
        stores = {"riskloop": feature_store(settings)}
        if args.stock:
            stores["stock"] = stock_store(settings)
        frames = {}
        for name, store in stores.items():
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            frames[name] = datasets.fraud_dataset(store, windows)
            print(json.dumps({"rows": kind, "path": name, "entity_rows": len(frames[name]),
                              "seconds": round(time.perf_counter() - t0, 2), "load_avg_1m": load}), flush=True)
        load = os.getloadavg()[0]
        ref = benchmark.reference_sql_dataset_seconds(settings, windows)
        print(json.dumps({"rows": kind, "path": "lateral_sql", "entity_rows": ref["rows"], "seconds": ref["seconds"],
                          "load_avg_1m": load}), flush=True)
        if "stock" in frames:
            a, b = frames["riskloop"], frames["stock"]
            pd.testing.assert_frame_equal(a[sorted(a.columns)], b[sorted(b.columns)], check_dtype=False)
            print(json.dumps({"rows": kind, "riskloop_equals_stock": True}), flush=True)


if __name__ == "__main__":
    main()
