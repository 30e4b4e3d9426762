"""Does the stream earn its place? The fraud model with and without the real-time windows, on a
world where card testing starts (`riskloop simulate --drift new-fraud-pattern`).

Card testing (riskloop/simulator/drift.py) is bursts of 5-20 tiny payments at night on one card:
the kind of pattern a 10-minute count sees and a daily count blurs. This simulates such a world,
runs it through the platform's own path (land → load → contracts → dbt → Feast), builds one
point-in-time training set through ``fraud_model_v1`` and trains the same XGBoost (riskloop's
defaults, same seed) twice on each prequential fold inside the drifted period: once on every
feature of the service, once without the ``card_realtime`` / ``customer_realtime`` features.
Folds: 7-day train, 7-day label delay, 7-day test (the handbook's protocol), the latest test week
ending a week before the simulation does (its chargebacks have arrived), labels as known at each
fold's cut-off. Besides the usual metrics over every fraud, the same metrics on the pattern alone:
the test rows that are genuine or card testing (the simulator's scenario 4, from its ground truth),
which is what the real-time windows are for.

    RISKLOOP_HOME=/tmp/rl-streambench RISKLOOP_PG_PORT=56300 RISKLOOP_MLFLOW_PORT=56301 \\
        .venv/bin/python bench/stream_features.py --days 84 --customers 3000 --drift-from 2018-05-06

Prints one JSON object: per feature set, the mean and per-fold AUC, AP and CP@100, over all frauds
and on card testing only. Stop the stack afterwards with `riskloop down` (same env).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import pandas as pd

from riskloop.core import windows
from riskloop.core.config import get_settings
from riskloop.features import datasets
from riskloop.features.store import feature_store
from riskloop.models import classifier, metrics, split
from riskloop.simulator.drift import CARD_TESTING_SCENARIO
from training.benchmark import run_protocol

log = logging.getLogger("stream_features")


def build_world(args: argparse.Namespace) -> pd.Timestamp:
    """Simulate, land and run the batch path; returns the simulation's end (its ``as_of``)."""
    from riskloop import simulator
    from riskloop.data.contracts import run_contracts
    from riskloop.data.ingest import load_landing
    from riskloop.data.transform import run_dbt
    from riskloop.features.store import apply, materialize
    from riskloop.ops import stack

    settings = get_settings()
    stack.up(settings)
    landing = settings.landing / "stream-bench"
    sim = simulator.simulate(days=args.days, customers=args.customers, seed=args.seed, drift="new-fraud-pattern",
                             drift_from=args.drift_from)
    manifest = simulator.write(sim, landing)
    load_landing(settings, landing)
    run_contracts(settings)
    run_dbt(settings, ["build"])
    apply(settings)
    as_of = pd.Timestamp(manifest["as_of"])
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    materialize(settings, as_of.to_pydatetime())
    return as_of


def pattern_metrics(frame: pd.DataFrame, folds: list[split.FraudWindows], known: pd.DataFrame,
                    features: list[str], card_testing: set[int], seed: int) -> dict[str, float]:
    """Mean over folds of the metrics on genuine and card-testing test rows only (other frauds out)."""
    out: list[dict[str, float]] = []
    for w in folds:
        train, test = split.split_fraud(frame, w, known)
        clf = classifier.fit(classifier.design_matrix(train, features), train["label"], None, seed)
        keep = (test["label"] == 0) | test["transaction_id"].isin(card_testing)
        test = test[keep.to_numpy()]
        scored = test[["customer_id", "event_timestamp", "label"]].assign(
            score=clf.predict_proba(classifier.design_matrix(test, features))[:, 1])
        out.append({**metrics.fraud_metrics(scored), "test_card_testing": int(test["label"].sum())})
    return {k: float(pd.Series([o[k] for o in out]).mean()) for k in out[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=84)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift-from", default="2018-05-06")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--skip-build", action="store_true", help="Reuse the warehouse a previous run built.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    t0 = time.perf_counter()
    if args.skip_build:
        as_of = datasets.transaction_range(settings)[1]
    else:
        as_of = build_world(args)
    build_s = time.perf_counter() - t0

    # the latest test week ends at the data's end; train / delay / test of 7 days each, earlier folds
    # shifted back a week; every training window starts on or after the drift's first day
    last_train = (as_of.normalize() - pd.Timedelta(days=28)).tz_convert("UTC")
    folds = split.prequential_windows(last_train, n_folds=args.folds)
    drift_from = pd.Timestamp(args.drift_from, tz="UTC")
    if min(w.train_start for w in folds) < drift_from:
        raise SystemExit(f"a fold starts training before the drift ({min(w.train_start for w in folds)}): "
                         "simulate more days or fewer folds")
    store = feature_store(settings)
    spans = [(min(w.train_start for w in folds), max(w.test_end for w in folds))]
    frame = datasets.fraud_dataset(store, spans)
    known = datasets.known_frauds(settings, max(w.test_end for w in folds))
    every = datasets.fraud_feature_names(store)
    realtime = {n for e in windows.ENTITIES for n in windows.feature_names(e)}
    sets = {"with_realtime_windows": every, "without_realtime_windows": [f for f in every if f not in realtime]}
    out: dict[str, object] = {
        "world": {"days": args.days, "customers": args.customers, "seed": args.seed, "drift": "new-fraud-pattern",
                  "drift_from": args.drift_from, "as_of": as_of.isoformat(), "entity_rows": len(frame),
                  "build_seconds": round(build_s, 1)},
        "folds": [w.as_params() for w in folds],
    }
    truth = pd.read_parquet(settings.landing / "stream-bench" / "transactions.parquet",
                            columns=["TRANSACTION_ID", "TX_FRAUD_SCENARIO"])
    card_testing = set(truth.loc[truth["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO, "TRANSACTION_ID"].astype(int))
    for name, features in sets.items():
        result = run_protocol(frame, folds, known, features, None, args.seed)
        out[name] = {k: v for k, v in result.items() if k != "params"}
        out[name]["card_testing_only"] = pattern_metrics(frame, folds, known, features, card_testing, args.seed)
        log.info("%s: AUC %.4f AP %.4f CP@100 %.4f", name, result["auc_roc"], result["average_precision"],
                 result["card_precision_at_100"])
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
