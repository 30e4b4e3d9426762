"""Credit test sets big enough to measure calibration, and whether repeat applicants leak.

Two questions about ``riskloop import handbook --applications-per-customer`` (default 8):

1. **Volume.** With ~1 application per card customer (the handbook's ~5,000 customers) the
   credit test set held ~1,070 applications and the simulator's *true* PD itself scored an ECE of
   ~0.02 there. Per volume, this draws applications from the simulator's credit generator
   (`riskloop.simulator.credit.derive_credit`, what the import lands) over the import's window
   (365 days before a 183-day period, outcomes 90 days later), splits them as
   ``riskloop train credit`` does (newest 25 % of applications with an outcome = test), fits the
   served configuration (``CREDIT_DEFAULT_PARAMS``, monotone constraints) and reports AUC, oracle
   AUC, Brier, ECE with its bootstrap interval and the true PD's own ECE on the same test rows.
2. **Leakage.** All applications of a customer share one latent risk. With several per customer
   most test applicants also applied in the training period. Could the model profit from having
   seen them? On the same test rows (the test-period applications of a random quarter of the
   customers), two models trained on equally many training-period rows are compared: one whose
   training rows include those customers' earlier applications, one whose rows come only from the
   other customers. Equal scores (within the repeat-to-repeat spread) mean no leak.

    nice .venv/bin/python bench/credit_volume.py [--customers 5000] [--repeats 5] [--volumes 1 8]

The KYC inputs (``kyc_level``, ``pep``) are left out, as in bench/credit_calibration.py: the true
PD does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd

from riskloop.models import classifier as model
from riskloop.models import metrics, split
from riskloop.simulator.credit import APPLICATION_WINDOW_DAYS_BEFORE_START, SpendingProfile, derive_credit

FEATURES = ["amount", "term_months", "annual_income", "debt_to_income", "n_delinquencies",
            "credit_history_months", "utilization"]
DAY_NS = 86_400 * 10**9
PERIOD_DAYS = 183  # the handbook file's period


def draw(customers: int, per_customer: float, seed: int) -> pd.DataFrame:
    """Applications with an observed outcome over the handbook import's window, in time order."""
    rng = np.random.default_rng(seed)
    profile = SpendingProfile(np.arange(customers, dtype=np.int64), rng.uniform(5, 100, customers),
                              rng.uniform(0, 4, customers))
    start = APPLICATION_WINDOW_DAYS_BEFORE_START * DAY_NS
    tables = derive_credit(profile, start, start + PERIOD_DAYS * DAY_NS, np.random.default_rng([seed, 1]),
                           per_customer)
    frame = tables["credit_applications"].merge(tables["credit_outcomes"], on="application_id")
    frame = frame.assign(amount=frame["amount_minor"] / 100, annual_income=frame["annual_income_minor"] / 100,
                         label=frame["defaulted"].astype("int64"),
                         event_timestamp=pd.to_datetime(frame["applied_at"], utc=True))
    return frame.sort_values(["event_timestamp", "application_id"], kind="mergesort").reset_index(drop=True)


def fit(train: pd.DataFrame) -> object:
    monotone = model.monotone_constraints(FEATURES, model.CREDIT_MONOTONE)
    return model.fit(model.design_matrix(train, FEATURES), train["label"],
                     {**model.CREDIT_DEFAULT_PARAMS, "monotone_constraints": monotone})


def evaluate(clf: object, test: pd.DataFrame) -> dict[str, float]:
    score = clf.predict_proba(model.design_matrix(test, FEATURES))[:, 1]
    y, oracle = test["label"].to_numpy(), test["true_default_probability"].to_numpy()
    low, high = metrics.ece_interval(y, score)
    auc, oracle_auc = metrics.auc_roc(y, score), metrics.auc_roc(y, oracle)
    return {"auc": auc, "oracle_auc": oracle_auc, "auc_to_oracle": auc / oracle_auc,
            "brier": metrics.brier(y, score), "ece": metrics.expected_calibration_error(y, score),
            "ece_ci95_low": low, "ece_ci95_high": high,
            "oracle_ece": metrics.expected_calibration_error(y, oracle)}


def volume_rows(customers: int, volumes: list[float], repeats: int) -> pd.DataFrame:
    rows = []
    for per_customer in volumes:
        for seed in range(repeats):
            frame = draw(customers, per_customer, seed)
            train, test, _ = split.split_by_time(frame, 0.25)
            seen = test["customer_id"].isin(set(train["customer_id"])).mean()
            rows.append({"per_customer": per_customer, "seed": seed, "applications_with_outcome": len(frame),
                         "test_rows": len(test), "test_applicants_seen": seen, **evaluate(fit(train), test)})
    return pd.DataFrame(rows)


def leakage_rows(customers: int, per_customer: float, repeats: int) -> pd.DataFrame:
    rows = []
    for seed in range(repeats):
        frame = draw(customers, per_customer, seed)
        train, test, _ = split.split_by_time(frame, 0.25)
        rng = np.random.default_rng([seed, 2])
        held = set(rng.choice(frame["customer_id"].unique(), customers // 4, replace=False))
        test = test[test["customer_id"].isin(held)]
        unseen = train[~train["customer_id"].isin(held)]
        # As many rows, drawn from every customer's training-period applications (held ones included).
        seen = train.sample(n=len(unseen), random_state=seed).sort_index()
        share = seen["customer_id"].isin(held).mean()
        for name, rows_ in (("seen (test customers' earlier applications in training)", seen),
                            ("unseen (test customers never in training)", unseen)):
            rows.append({"model": name, "seed": seed, "train_rows": len(rows_), "test_rows": len(test),
                         "held_share_of_train": share if rows_ is seen else 0.0, **evaluate(fit(rows_), test)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--volumes", type=float, nargs="+", default=[1.0, 8.0])
    args = parser.parse_args()
    started = time.perf_counter()
    cols = ["auc", "auc_to_oracle", "brier", "ece", "ece_ci95_low", "ece_ci95_high", "oracle_ece"]
    volume = volume_rows(args.customers, args.volumes, args.repeats)
    print(volume.groupby("per_customer")[["applications_with_outcome", "test_rows", "test_applicants_seen",
                                          *cols]].agg(["mean", "std"]).round(4).T.to_string())
    leak = leakage_rows(args.customers, max(args.volumes), args.repeats)
    print(leak.groupby("model")[["train_rows", "test_rows", "held_share_of_train", *cols]]
          .agg(["mean", "std"]).round(4).T.to_string())
    by_model = {name: group.set_index("seed")[["auc", "brier", "ece"]] for name, group in leak.groupby("model")}
    seen_, unseen_ = (by_model[name] for name in sorted(by_model))
    print("unseen - seen, per repeat (a leak would make it negative for AUC, positive for Brier/ECE):\n"
          + (unseen_ - seen_).round(4).to_string())
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "load_average": os.getloadavg(),
                      "customers": args.customers, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
