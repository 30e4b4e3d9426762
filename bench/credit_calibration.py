"""How well calibrated is the credit model, measured where sampling noise does not hide it?

The demo's credit test set holds ~1,000 applications: on it even the simulator's *true* PD shows
an expected calibration error (ECE, 10 equal-width bins) of ~0.02 from sampling noise alone. This
script therefore draws applications straight from the simulator's credit generator
(`riskloop.simulator.credit.derive_credit`, the generator `riskloop simulate` lands), trains on
data sets of the demo's size (``--apps``, time-ordered like ``riskloop train credit``: newest 25 %
test, newest 25 % of the rest validation) and measures each model on ``--test-apps`` fresh
applications, where the ECE is the model's own. Compared, per hyper-parameter set:

- ``raw``: the model fitted on the whole training part (what ``riskloop train credit`` serves);
- ``platt``: Platt scaling (a logistic fit on the margin) fitted on the validation rows, applied
  to the model fitted on the older rows only (validation is then neither train nor test);
- ``isotonic``: the same with isotonic regression.

    .venv/bin/python bench/credit_calibration.py [--repeats 8] [--apps 4300] [--test-apps 150000]

The KYC inputs (``kyc_level``, ``pep``) are left out: the true PD does not depend on them.
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
from riskloop.simulator.credit import SpendingProfile, derive_credit

FEATURES = ["amount", "term_months", "annual_income", "debt_to_income", "n_delinquencies",
            "credit_history_months", "utilization"]
DAY_NS = 86_400 * 10**9


def draw(customers: int, seed: int) -> pd.DataFrame:
    """Applications with an observed outcome from ``customers`` simulated customers, in time order."""
    rng = np.random.default_rng(seed)
    profile = SpendingProfile(np.arange(customers, dtype=np.int64), rng.uniform(5, 100, customers),
                              rng.uniform(0, 4, customers))
    tables = derive_credit(profile, 0, 400 * DAY_NS, np.random.default_rng([seed, 1]))
    frame = tables["credit_applications"].merge(tables["credit_outcomes"], on="application_id")
    frame = frame.assign(amount=frame["amount_minor"] / 100, annual_income=frame["annual_income_minor"] / 100,
                         label=frame["defaulted"].astype("int64"),
                         event_timestamp=pd.to_datetime(frame["applied_at"], utc=True))
    return frame.sort_values(["event_timestamp", "application_id"], kind="mergesort").reset_index(drop=True)


def scores(label: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    return {"ece": metrics.expected_calibration_error(label, prob), "auc": metrics.auc_roc(label, prob),
            "brier": metrics.brier(label, prob)}


def main() -> None:
    from scipy.special import expit
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--apps", type=int, default=4300, help="customers per training data set (~1 application each)")
    parser.add_argument("--test-apps", type=int, default=150_000)
    args = parser.parse_args()
    started = time.perf_counter()
    fresh = draw(args.test_apps, 10_000)
    x_fresh, y_fresh = model.design_matrix(fresh, FEATURES), fresh["label"].to_numpy()
    monotone = model.monotone_constraints(FEATURES, model.CREDIT_MONOTONE)
    configs = {"fraud defaults (DEFAULT_PARAMS)": {},
               "credit defaults (CREDIT_DEFAULT_PARAMS)": model.CREDIT_DEFAULT_PARAMS}
    rows = []
    for seed in range(args.repeats):
        frame = draw(args.apps, seed)
        train, test, _ = split.split_by_time(frame, 0.25)
        older, valid, _ = split.split_by_time(train, 0.25)
        base = {"seed": seed, "rows": len(train), "small_test_rows": len(test),
                "oracle_ece_small_test": metrics.expected_calibration_error(test["label"],
                                                                             test["true_default_probability"])}
        for name, params in configs.items():
            params = {**params, "monotone_constraints": monotone}
            whole = model.fit(model.design_matrix(train, FEATURES), train["label"], params)
            part = model.fit(model.design_matrix(older, FEATURES), older["label"], params)
            valid_margin = part.predict(model.design_matrix(valid, FEATURES), output_margin=True)
            platt = LogisticRegression(C=1e6).fit(valid_margin.reshape(-1, 1), valid["label"])
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(expit(valid_margin),
                                                                                     valid["label"])
            part_margin = part.predict(x_fresh, output_margin=True)
            methods = {"raw": whole.predict_proba(x_fresh)[:, 1],
                       "platt": platt.predict_proba(part_margin.reshape(-1, 1))[:, 1],
                       "isotonic": iso.predict(expit(part_margin))}
            for method, prob in methods.items():
                rows.append({**base, "params": name, "method": method, **scores(y_fresh, prob)})
    results = pd.DataFrame(rows)
    summary = results.groupby(["params", "method"])[["ece", "auc", "brier"]].agg(["mean", "std"]).round(4)
    oracle = scores(y_fresh, fresh["true_default_probability"].to_numpy())
    print(summary.to_string())
    print(json.dumps({
        "fresh_applications": len(fresh), "oracle_on_fresh": {k: round(v, 4) for k, v in oracle.items()},
        "oracle_ece_on_small_test_sets": {"mean": round(results["oracle_ece_small_test"].mean(), 4),
                                          "std": round(results.drop_duplicates("seed")["oracle_ece_small_test"].std(), 4),
                                          "rows": int(results["small_test_rows"].mean())},
        "training_rows": int(results["rows"].mean()), "repeats": args.repeats,
        "seconds": round(time.perf_counter() - started, 1), "load_average": os.getloadavg()}, indent=2))
    # The calibration curve of the served configuration on the fresh applications (first repeat).
    frame = draw(args.apps, 0)
    train, _, _ = split.split_by_time(frame, 0.25)
    clf = model.fit(model.design_matrix(train, FEATURES), train["label"],
                    {**model.CREDIT_DEFAULT_PARAMS, "monotone_constraints": monotone})
    print(metrics.calibration_table(y_fresh, clf.predict_proba(x_fresh)[:, 1]).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
