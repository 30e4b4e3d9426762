"""Training: the label-delay split, the handbook metrics, reproducibility, MLflow registration."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest
from fixtures_marts import isolated_settings, make_marts, write_marts

from training import metrics, split

D = pd.Timestamp("2024-01-01", tz="UTC")


def day(n: float) -> pd.Timestamp:
    return D + pd.Timedelta(days=n)


# --- split -------------------------------------------------------------------------------

def test_default_windows_fit_a_30_day_simulation() -> None:
    w = split.fraud_windows(day(0), day(29.9))
    assert (w.train_start, w.train_end, w.test_start, w.test_end) == (day(2), day(9), day(16), day(23))
    assert w.label_cutoff == w.test_start  # labels as known when the model is trained
    assert split.fraud_windows(day(0), day(29.9), label_cutoff_days=0).label_cutoff == w.train_end
    with pytest.raises(ValueError, match="not enough history"):
        split.fraud_windows(day(0), day(29.9), train_days=14)


def test_split_drops_labels_unknown_at_cutoff_and_keeps_final_test_labels() -> None:
    w = split.fraud_windows(day(0), day(29.9), label_cutoff_days=0)  # cut-off = train_end = day 9
    rows = [  # customer, tx day, is_fraud, fraud_known_at day
        ("a", 3, 1, 5),     # known before the cut-off: a training fraud
        ("b", 8, 1, 12),    # known after the cut-off: genuine for training
        ("c", 4, 0, None),  # genuine
        ("d", 17, 1, 27),   # test fraud known late (after the test window): still a test fraud
        ("e", 18, 0, None),
        ("a", 17, 0, None),  # card a was known compromised (day 5): removed from the test set
        ("f", 12, 1, 14),   # delay period: neither train nor test ...
        ("f", 15.5, 0, None),
        ("f", 16.5, 0, None),  # ... but card f is blocked from day 15 on: removed
        ("g", 19, 1, 20),   # g's fraud, reported on day 20 ...
        ("g", 20.5, 0, None),  # ... and g removed from day 21, not on day 20 itself
        ("g", 21.5, 0, None),
        ("h", 0.5, 1, 1),   # h's fraud predates the training window: reissued card, stays in the test
        ("h", 17.5, 0, None),
    ]
    df = pd.DataFrame([{
        "customer_id": c, "event_timestamp": day(t) + pd.Timedelta(hours=1), "is_fraud": y,
        "fraud_known_at": day(k) if k is not None else pd.NaT} for c, t, y, k in rows])
    df["fraud_known_at"] = pd.to_datetime(df["fraud_known_at"], utc=True)

    train, test = split.split_fraud(df, w)

    assert dict(zip(train["customer_id"], train["label"])) == {"a": 1, "b": 0, "c": 0}
    assert list(train["is_fraud"]) == [1, 1, 0]  # the final labels stay available for reporting
    assert list(zip(test["customer_id"], test["label"])) == [("d", 1), ("e", 0), ("g", 1), ("g", 0), ("h", 0)]
    # With the default cut-off (the training moment, day 16), b's label is known.
    train_default, _ = split.split_fraud(df, split.fraud_windows(day(0), day(29.9)))
    assert dict(zip(train_default["customer_id"], train_default["label"]))["b"] == 1


# --- metrics -----------------------------------------------------------------------------

def test_card_precision_at_k_hand_computed() -> None:
    rows = [  # day, card, score, label
        (0, "a", 0.9, 1), (0, "a", 0.1, 0), (0, "b", 0.8, 0), (0, "c", 0.7, 1), (0, "d", 0.2, 0),
        (1, "a", 0.95, 1), (1, "b", 0.6, 0), (1, "c", 0.5, 1), (1, "d", 0.4, 1), (1, "e", 0.3, 0),
    ]
    df = pd.DataFrame([{"event_timestamp": day(d) + pd.Timedelta(hours=2), "customer_id": c, "score": s,
                        "label": y} for d, c, s, y in rows])
    # Day 0, top 2 cards by max score: a (0.9, fraud), b (0.8) -> 1/2; a is now detected.
    # Day 1 without a: b (0.6), c (0.5, fraud) -> 1/2. (c was fraud on day 0 but not in the top 2.)
    per_day = metrics.card_precision_at_k_per_day(df, k=2)
    assert list(per_day) == [0.5, 0.5]
    assert metrics.card_precision_at_k(df, k=2) == 0.5
    # k=3: day 0 -> a, b, c: 2/3; day 1 without a and c: b, d (fraud), e -> 1/3.
    assert metrics.card_precision_at_k_per_day(df, k=3).tolist() == pytest.approx([2 / 3, 1 / 3])
    # Fewer cards than k: still divided by k (the handbook's definition).
    assert metrics.card_precision_at_k(df[df["event_timestamp"] < day(1)], k=10) == pytest.approx(0.2)


def test_auc_and_ap_are_nan_for_a_single_class() -> None:
    assert np.isnan(metrics.auc_roc([0, 0], [0.1, 0.2]))
    assert np.isnan(metrics.average_precision([0, 0], [0.1, 0.2]))
    assert metrics.auc_roc([0, 1], [0.1, 0.2]) == 1.0


# --- reproducibility ---------------------------------------------------------------------

def test_same_data_and_seed_give_identical_model_bytes() -> None:
    from training import model

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(2000, 6)), columns=[f"f{i}" for i in range(6)])
    y = (x["f0"] + 0.5 * x["f1"] + rng.normal(scale=0.5, size=len(x)) > 1).astype(int)
    params = {"n_estimators": 30}
    first = model.model_bytes(model.fit(x, y, params, seed=7))
    assert first == model.model_bytes(model.fit(x, y, params, seed=7))
    assert first != model.model_bytes(model.fit(x, y, params, seed=8))  # subsample: the seed matters


def test_expected_calibration_error_hand_computed() -> None:
    # bin 1 ([0.1, 0.2)): predicted 0.15, observed 0.5, 2 rows; bin 8: predicted 0.85, observed 1, 2 rows
    y, p = [0, 1, 1, 1], [0.15, 0.15, 0.85, 0.85]
    assert metrics.expected_calibration_error(y, p) == pytest.approx((2 * 0.35 + 2 * 0.15) / 4)
    assert metrics.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_credit_monotone_constraints_hold_on_noisy_data() -> None:
    """With the constraints, more delinquencies never lower the predicted risk, whatever the noise."""
    from training import model

    rng = np.random.default_rng(3)
    n = 3000
    x = pd.DataFrame({"n_delinquencies": rng.poisson(1.0, n).astype(float), "annual_income": rng.lognormal(10.5, 0.4, n),
                      "amount": rng.uniform(1000, 20000, n)})
    logit = -2 + 0.4 * x["n_delinquencies"] - 0.5 * np.log(x["annual_income"] / 35000)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    cons = model.monotone_constraints(list(x.columns), model.CREDIT_MONOTONE)
    assert cons == {"n_delinquencies": 1, "annual_income": -1}
    clf = model.fit(x, y, {"n_estimators": 60, "max_depth": 5, "monotone_constraints": cons}, seed=1)
    grid = pd.DataFrame({"n_delinquencies": np.arange(0, 12, dtype=float), "annual_income": 30000.0, "amount": 5000.0})
    risk = clf.predict_proba(grid[list(x.columns)])[:, 1]
    assert np.all(np.diff(risk) >= -1e-9)
    grid = pd.DataFrame({"n_delinquencies": 1.0, "annual_income": np.linspace(10_000, 200_000, 20), "amount": 5000.0})
    assert np.all(np.diff(clf.predict_proba(grid[list(x.columns)])[:, 1]) <= 1e-9)


# --- end to end through Feast and the real MLflow server ------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_registers_versions_with_aliases_and_metrics(stack_env: dict[str, str]) -> None:
    from mlflow import MlflowClient

    from riskloop import features
    from training.train import train_credit, train_fraud

    suffix = uuid.uuid4().hex[:8]
    base = isolated_settings("riskloop_t_training")
    settings = base.model_copy(update={"fraud_model_name": f"test-fraud-{suffix}",
                                       "credit_model_name": f"test-credit-{suffix}"})
    write_marts(settings, make_marts(days=30, customers=60, terminals=30, seed=2))
    features.apply(settings)
    client = MlflowClient(settings.tracking_uri)
    params = {"n_estimators": 40}

    first = train_fraud(settings, params)
    assert first.version == "1" and set(first.aliases) == {"champion", "challenger"}
    second = train_fraud(settings, params)
    assert second.version == "2" and second.aliases == ("challenger",)
    name = settings.fraud_model_name
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "2"

    run = client.get_run(second.run_id)
    assert set(run.data.metrics) == {"auc_roc", "average_precision", "card_precision_at_100"}
    assert run.data.metrics["auc_roc"] > 0.7  # amount > 220 is learnable
    assert run.data.params["features"].split(",") == list(second.features)
    assert list(second.features[:3]) == ["amount", "is_weekend", "is_night"]
    assert run.data.params["feature_service"] == "fraud_model_v1"
    assert run.data.params["test_start"] == "2024-01-17T00:00:00+00:00"
    assert run.data.params["train_content_hash"] == client.get_run(first.run_id).data.params["train_content_hash"]
    artifacts = {a.path for a in client.list_artifacts(second.run_id, "reference")}
    assert artifacts == {"reference/features.parquet"}
    assert {a.path for a in client.list_artifacts(second.run_id, "evaluation")} == {
        "evaluation/test_predictions.parquet"}

    credit = train_credit(settings, params)
    assert credit.version == "1" and set(credit.aliases) == {"champion", "challenger"}
    assert set(client.get_run(credit.run_id).data.metrics) == {"auc_roc", "brier", "ece", "oracle_auc_roc",
                                                                "auc_to_oracle"}
    assert 0 <= credit.metrics["ece"] <= 1 and credit.metrics["oracle_auc_roc"] > 0.5
    assert "n_delinquencies" in client.get_run(credit.run_id).data.params["xgb_monotone_constraints"]
    assert credit.metrics["auc_roc"] > 0.6
