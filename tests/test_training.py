"""Training: the label-delay split, the handbook metrics, reproducibility, MLflow registration."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import pytest
from fixtures_marts import isolated_settings, make_marts, write_marts

from riskloop.models import metrics, split

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
    from riskloop.models import classifier as model

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


def test_ece_interval_brackets_the_ece_and_narrows_with_rows() -> None:
    """The bootstrap interval holds the run's ECE, is reproducible, and shrinks as rows grow: on
    perfectly calibrated scores its width is the sampling noise a goal like ECE <= 0.02 must beat."""
    rng = np.random.default_rng(3)
    widths = []
    for n in (1_000, 16_000):
        p = rng.beta(1, 8, n)
        y = (rng.random(n) < p).astype(int)  # calibrated by construction
        low, high = metrics.ece_interval(y, p)
        assert low <= metrics.expected_calibration_error(y, p) <= high
        assert (low, high) == metrics.ece_interval(y, p)  # fixed seed: the same run logs the same interval
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 16x the rows, ~1/4 the width
    # A miscalibrated model's interval excludes the truth's: scores 0.05 too high everywhere.
    p = rng.beta(1, 8, 16_000)
    y = (rng.random(len(p)) < p).astype(int)
    assert metrics.ece_interval(y, np.clip(p + 0.05, 0, 1))[0] > metrics.ece_interval(y, p)[1]
    assert all(math.isnan(v) for v in metrics.ece_interval([], []))


def test_average_precision_interval_covers_the_truth_and_narrows_with_frauds() -> None:
    """The realised-AP interval the monitor pages on: it holds the sample's AP, is reproducible,
    covers the population's AP, and is wide on a few dozen frauds (where a 0.1 drop is noise) but
    narrow on thousands."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random(n) < 0.05).astype(int)
        return y, rng.normal(1.2 * y, 1.0)  # scores: frauds one standard deviation higher

    truth = average_precision_score(*draw(500_000))
    widths = []
    for n in (600, 60_000):  # ~30 and ~3,000 frauds
        y, s = draw(n)
        low, high = metrics.average_precision_interval(y, s)
        assert low <= metrics.average_precision(y, s) <= high
        assert low <= truth <= high, (n, low, truth, high)
        assert (low, high) == metrics.average_precision_interval(y, s)  # fixed seed: reproducible
        widths.append(high - low)
    assert widths[0] > 0.1 and widths[1] < widths[0] / 5  # ~1/sqrt(n)
    assert all(math.isnan(v) for v in metrics.average_precision_interval([0, 0, 0], [0.1, 0.2, 0.3]))
    # The resample is drawn over blocks of rows; the sample itself, as its blocks' counts, is the
    # sample's AP exactly, ties between frauds and legitimate payments included.
    for n in (7, 400, 5000):
        y = (rng.random(n) < 0.2).astype(int)
        y[0] = 1
        s = np.round(rng.normal(y, 1.0), 1)  # many ties
        sizes, is_pos = metrics._ap_categories(y, s)
        assert sizes.sum() == n and sizes[is_pos].sum() == y.sum()
        assert metrics._ap_of_counts(sizes[None, :], is_pos)[0] == pytest.approx(average_precision_score(y, s))


def test_credit_monotone_constraints_hold_on_noisy_data() -> None:
    """With the constraints, more delinquencies never lower the predicted risk, whatever the noise."""
    from riskloop.models import classifier as model

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


# --- plots, model card, Dask (no stack) ------------------------------------------------------

def _synthetic(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    x.loc[rng.random(n) < 0.05, "f2"] = np.nan  # missing values reach the SHAP summary too
    y = (x["f0"] + 0.5 * x["f1"] + rng.normal(scale=0.7, size=n) > 1.2).astype(int)
    return x, y


def test_shap_contributions_add_up_to_the_margin_and_plots_are_deterministic() -> None:
    import io

    import xgboost as xgb

    from riskloop.models import classifier as model
    from training import plots

    x, y = _synthetic()
    clf = model.fit(x, y, {"n_estimators": 30}, seed=1)
    contribs, rows = plots.shap_values(clf, x, seed=3, sample=200)
    assert len(rows) == 200 and list(contribs.columns) == list(x.columns)
    bias = float(clf.get_booster().predict(xgb.DMatrix(rows.head(1)), pred_contribs=True)[0, -1])
    margin = clf.get_booster().predict(xgb.DMatrix(rows), output_margin=True)
    assert np.allclose(contribs.sum(axis=1).to_numpy() + bias, margin, atol=1e-4)
    importance = plots.mean_abs_shap(contribs)
    assert importance.index[0] == "f0" and importance.iloc[0] == importance.max()  # f0 drives the label

    score = clf.predict_proba(x)[:, 1]

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()

    for draw in (lambda: plots.roc(y.to_numpy(), score, "t"), lambda: plots.calibration(y.to_numpy(), score, "t"),
                 lambda: plots.shap_summary(contribs, rows, "t", seed=3)):
        first = png(draw())
        assert first.startswith(b"\x89PNG") and first == png(draw())


def test_model_card_states_use_data_metrics_limitations_owner_and_constraints() -> None:
    from training import card

    facts = card.CardFacts(
        kind="credit", model_name="m", owner="credit-risk-team", run_id="abc", git_commit="f00d",
        feature_service="credit_model_v1", features=["n_delinquencies", "annual_income"],
        run_params={"train_rows": 100, "train_min_ts": "2024-01-01", "train_max_ts": "2024-02-01",
                    "valid_rows": 25, "valid_min_ts": "2024-01-25", "valid_fraction": 0.25, "test_rows": 30,
                    "test_min_ts": "2024-02-01", "test_max_ts": "2024-02-10"},
        xgb_params={"max_depth": 3}, test_metrics={"auc_roc": 0.81, "brier": 0.1},
        validation_metrics={"auc_roc": 0.79, "brier": float("nan")}, label_delay="outcome after 90 days",
        content_hash="ab" * 32, monotone_constraints={"n_delinquencies": 1, "annual_income": -1},
        feature_importance=pd.Series({"n_delinquencies": 0.5, "annual_income": 0.2}),
        search={"trials": 4, "sampler": "optuna TPE", "metric": "valid_brier", "direction": "minimize",
                "best_trial": 2, "best_value": 0.09},
        contracts=[{"schema": "marts", "success": True, "run_at": "2024-02-11T00:00:00+00:00", "evaluated": 12,
                    "tables": ["a", "b"], "failed": 0}])
    text = card.render(facts)
    for section in ("## Intended use", "## Data", "## Metrics", "## Limitations", "## Features",
                    "## Monotone constraints"):
        assert section in text
    assert "**Owner:** credit-risk-team" in text and "ab" * 32 in text and "outcome after 90 days" in text
    assert "| auc_roc | 0.8100 | 0.7900 |" in text and "| brier | 0.1000 | n/a |" in text
    assert "| n_delinquencies | increasing risk |" in text and "| annual_income | decreasing risk |" in text
    assert "`marts`: passed" in text and "4-trial search" in text and "best trial 2" in text
    fraud = card.render(facts.__class__(**{**facts.__dict__, "kind": "fraud", "monotone_constraints": {},
                                          "contracts": [], "search": None}))
    assert "## Monotone constraints" not in fraud and "no contract run recorded" in fraud


@pytest.fixture(scope="module")
def dask_client():
    """A real local Dask cluster, two worker processes of one thread each (started once: ~15 s)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_xgboost_dask_on_a_local_cluster_matches_single_process_quality(dask_client) -> None:
    from riskloop.models import classifier as model

    x, y = _synthetic(6000, seed=5)
    x_train, y_train, x_test, y_test = x.iloc[:4000], y.iloc[:4000], x.iloc[4000:], y.iloc[4000:]
    params = {"n_estimators": 60, "max_depth": 4}
    single = model.fit(x_train, y_train, params, seed=2)
    distributed = model.fit_dask(x_train, y_train, dask_client, params, seed=2)
    assert type(distributed) is type(single)  # a plain XGBClassifier: logged and served like any other
    assert distributed.get_booster().num_boosted_rounds() == 60
    auc_single = metrics.auc_roc(y_test, single.predict_proba(x_test)[:, 1])
    auc_dask = metrics.auc_roc(y_test, distributed.predict_proba(x_test)[:, 1])
    assert auc_single > 0.85
    assert abs(auc_dask - auc_single) < 0.01, (auc_dask, auc_single)


# --- end to end through Feast and the real MLflow server ------------------------------------

@pytest.fixture(scope="module")
def marts_settings(stack_env: dict[str, str]):
    """One synthetic warehouse with Feast applied, shared by the end-to-end training tests."""
    from riskloop.features import store as features

    suffix = uuid.uuid4().hex[:8]
    base = isolated_settings("riskloop_t_training")
    settings = base.model_copy(update={"fraud_model_name": f"test-fraud-{suffix}",
                                       "credit_model_name": f"test-credit-{suffix}",
                                       "model_owner": "fraud-ml-team"})
    write_marts(settings, make_marts(days=30, customers=60, terminals=30, seed=2))
    features.apply(settings)
    return settings


PLOTS = {f"plots/{n}.png" for n in ("roc", "precision_recall", "calibration", "shap_summary", "score_distribution")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_registers_versions_with_aliases_metrics_plots_and_card(marts_settings) -> None:
    from mlflow import MlflowClient

    from riskloop.governance import review
    from training.train import train_credit, train_fraud

    settings = marts_settings
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
    test_metrics = {"auc_roc", "average_precision", "card_precision_at_100"}
    assert set(run.data.metrics) == test_metrics | {f"valid_{m}" for m in test_metrics}
    assert run.data.metrics["auc_roc"] > 0.7  # amount > 220 is learnable
    assert run.data.params["features"].split(",") == list(second.features)
    assert list(second.features[:3]) == ["amount", "is_weekend", "is_night"]
    assert run.data.params["feature_service"] == "fraud_model_v1"
    assert run.data.params["test_start"] == "2024-01-17T00:00:00+00:00"
    # validation: the newest quarter of the training window, before the test window
    assert run.data.params["train_min_ts"] < run.data.params["valid_min_ts"] <= run.data.params["train_max_ts"]
    assert run.data.params["valid_max_ts"] < run.data.params["test_start"]
    assert run.data.params["train_content_hash"] == client.get_run(first.run_id).data.params["train_content_hash"]
    assert second.run_url.endswith(f"/#/experiments/{run.info.experiment_id}/runs/{second.run_id}")
    artifacts = {a.path for a in client.list_artifacts(second.run_id, "reference")}
    assert artifacts == {"reference/features.parquet"}
    assert {a.path for a in client.list_artifacts(second.run_id, "evaluation")} == {
        "evaluation/test_predictions.parquet"}
    plots = {a.path: a.file_size for a in client.list_artifacts(second.run_id, "plots")}
    assert set(plots) == PLOTS and all(size > 5000 for size in plots.values())

    # The model card: an artifact, the version's description, and what the reviewer's card shows.
    card_md = client.download_artifacts(second.run_id, "model_card.md")
    text = open(card_md).read()
    assert text.startswith(f"# Model card: {name} (fraud)") and "**Owner:** fraud-ml-team" in text
    assert run.data.params["train_content_hash"] in text and "2024-01-17" not in text.split("## Data")[0]
    assert f"| auc_roc | {run.data.metrics['auc_roc']:.4f} | {run.data.metrics['valid_auc_roc']:.4f} |" in text
    assert "## Limitations" in text and "## Monotone constraints" not in text
    assert review.card(settings, name, "2")["description"] == text

    credit = train_credit(settings, params)
    assert credit.version == "1" and set(credit.aliases) == {"champion", "challenger"}
    credit_run = client.get_run(credit.run_id).data
    assert {"auc_roc", "brier", "ece", "oracle_auc_roc", "auc_to_oracle", "oracle_ece", "valid_brier"} <= set(
        credit_run.metrics)
    # The credit model's own defaults (shallow, slow, heavier leaves) under the caller's parameters.
    from riskloop.models.classifier import CREDIT_DEFAULT_PARAMS

    assert credit_run.params["xgb_n_estimators"] == "40"
    assert credit_run.params["xgb_max_depth"] == str(CREDIT_DEFAULT_PARAMS["max_depth"]) != "4"
    assert credit_run.params["xgb_min_child_weight"] == str(CREDIT_DEFAULT_PARAMS["min_child_weight"])
    assert 0 <= credit.metrics["ece"] <= 1 and credit.metrics["oracle_auc_roc"] > 0.5
    assert "n_delinquencies" in client.get_run(credit.run_id).data.params["xgb_monotone_constraints"]
    # The ECE with its sampling uncertainty, the share of test applicants who also applied before
    # the split, and the test calibration curve as a table.
    assert credit.metrics["ece_ci95_low"] <= credit.metrics["ece"] <= credit.metrics["ece_ci95_high"]
    assert 0 <= float(credit_run.params["test_applicants_seen_in_training"]) <= 1
    from training.train import CALIBRATION_ARTIFACT

    curve = pd.read_parquet(client.download_artifacts(credit.run_id, CALIBRATION_ARTIFACT))
    assert list(curve.columns) == ["bin", "n", "mean_predicted", "observed"]
    assert curve["n"].sum() == int(credit_run.params["test_rows"])
    assert credit.metrics["auc_roc"] > 0.6
    assert {a.path for a in client.list_artifacts(credit.run_id, "plots")} == PLOTS
    credit_card = client.get_model_version(settings.credit_model_name, credit.version).description
    assert "| n_delinquencies | increasing risk |" in credit_card and "Intended use" in credit_card


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_search_logs_nested_trials_and_selects_on_validation_only(marts_settings) -> None:
    from mlflow import MlflowClient

    from training.train import train_fraud

    settings = marts_settings.model_copy(update={"fraud_model_name": marts_settings.fraud_model_name + "-search"})
    client = MlflowClient(settings.tracking_uri)
    seen: list[tuple[int, float, float]] = []

    class Recorder:
        def run_started(self, url: str) -> None:
            seen.append((-1, 0.0, 0.0))

        def trial_finished(self, number: int, total: int, value: float, best: float) -> None:
            seen.append((number, value, best))

    result = train_fraud(settings, {"n_estimators": 30}, search_trials=4, progress=Recorder())
    parent = client.get_run(result.run_id)
    trials = client.search_runs([parent.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{result.run_id}'", max_results=50)
    assert len(trials) == 4 and seen[0][0] == -1 and [n for n, _, _ in seen[1:]] == [0, 1, 2, 3]
    for trial in trials:  # trials are judged on validation rows: no test metric is ever computed for them
        assert set(trial.data.metrics) == {"valid_auc_roc", "valid_average_precision", "valid_card_precision_at_100"}
        assert trial.data.params["xgb_n_estimators"] == "30"  # the caller's parameter is held fixed
    [baseline] = [r for r in trials if r.data.tags["riskloop.search_trial"] == "0"]
    assert baseline.data.params["xgb_max_depth"] == "4" and baseline.data.params["xgb_learning_rate"] == "0.1"
    values = {int(r.data.tags["riskloop.search_trial"]): r.data.metrics["valid_average_precision"] for r in trials}
    best_number = min(n for n, v in values.items() if v == max(values.values()))  # ties: the earliest trial
    best = next(r for r in trials if r.data.tags["riskloop.search_trial"] == str(best_number))
    assert parent.data.params["search_best_trial"] == best.data.tags["riskloop.search_trial"]
    assert parent.data.params["search_metric"] == "valid_average_precision"
    assert parent.data.metrics["valid_average_precision"] == best.data.metrics["valid_average_precision"]
    assert seen[-1][2] == best.data.metrics["valid_average_precision"]
    for key in ("xgb_max_depth", "xgb_learning_rate", "xgb_min_child_weight", "xgb_subsample"):
        assert parent.data.params[key] == best.data.params[key]  # the final model uses the chosen trial
    assert {"auc_roc", "average_precision", "card_precision_at_100"} <= set(parent.data.metrics)
    assert result.search == {"trials": 4, "sampler": "optuna TPE", "metric": "valid_average_precision",
                             "direction": "maximize", "best_trial": int(best.data.tags["riskloop.search_trial"]),
                             "best_value": best.data.metrics["valid_average_precision"]}
    assert "4-trial search" in client.get_model_version(settings.fraud_model_name, result.version).description

    # Same data, parameters, trials and seed: the same trials, the same choice, the same model bytes.
    import mlflow.xgboost

    from riskloop.models import classifier as model

    again = train_fraud(settings, {"n_estimators": 30}, search_trials=4)
    assert again.search == result.search
    mlflow.set_tracking_uri(settings.tracking_uri)
    first, second = (mlflow.xgboost.load_model(f"models:/{settings.fraud_model_name}/{v}")
                     for v in (result.version, again.version))
    assert model.model_bytes(first) == model.model_bytes(second)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_on_a_dask_cluster_registers_a_model_of_the_same_quality(marts_settings, dask_client) -> None:
    from mlflow import MlflowClient

    from training.train import train_credit

    settings = marts_settings.model_copy(update={"credit_model_name": marts_settings.credit_model_name + "-dask"})
    single = train_credit(settings, {"n_estimators": 40})
    distributed = train_credit(settings, {"n_estimators": 40}, dask_client=dask_client)
    params = MlflowClient(settings.tracking_uri).get_run(distributed.run_id).data.params
    assert params["training_backend"].startswith("xgboost.dask on tcp://") and "(2 workers)" in params["training_backend"]
    assert params["train_content_hash"] == single.params["train_content_hash"]
    assert abs(distributed.metrics["auc_roc"] - single.metrics["auc_roc"]) < 0.03
    assert abs(distributed.metrics["brier"] - single.metrics["brier"]) < 0.01


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_train_with_search_prints_the_run_url_and_the_choice(marts_settings, monkeypatch) -> None:
    from mlflow import MlflowClient
    from principals import cli_env
    from typer.testing import CliRunner

    from riskloop.cli import app
    from riskloop.governance.authors import author_of

    name = marts_settings.credit_model_name + "-cli"
    monkeypatch.setenv("RISKLOOP_DATABASE_URL", marts_settings.database_url)
    monkeypatch.setenv("RISKLOOP_CREDIT_MODEL_NAME", name)
    refused = CliRunner().invoke(app, ["train", "credit"])  # no key: nobody to record as the author
    assert refused.exit_code == 2 and "RISKLOOP_API_KEY is not set" in " ".join(refused.output.split())
    for var, value in cli_env("carol").items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("USER", "mallory")  # MLflow's run user_id follows these: a claim anyone can make
    monkeypatch.setenv("LOGNAME", "mallory")
    result = CliRunner().invoke(app, ["train", "credit", "--search", "2", "--param", "n_estimators=20"])
    assert result.exit_code == 0, result.output
    run_id = MlflowClient(marts_settings.tracking_uri).get_model_version(name, "1").run_id
    authorship = author_of(marts_settings, name, "1")  # the key's principal, not the forged user
    assert (authorship.author, authorship.run_id) == ("carol", run_id)
    assert MlflowClient(marts_settings.tracking_uri).get_run(run_id).info.user_id == "mallory"
    assert f"/runs/{run_id}" in result.output and "registered " + name + " v1" in result.output
    assert "search: trial" in result.output and "of 2 chosen on valid_brier" in result.output
    assert "View run" not in result.output  # one URL, not two lines per trial from MLflow
    client = MlflowClient(marts_settings.tracking_uri)
    params = client.get_run(run_id).data.params
    assert params["search_trials"] == "2" and params["xgb_n_estimators"] == "20"
    # Trial 0 is what `riskloop train credit` without a search fits: the credit defaults.
    from riskloop.models.classifier import CREDIT_DEFAULT_PARAMS

    parent = client.get_run(run_id)
    [baseline] = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' "
                                    "and tags.`riskloop.search_trial` = '0'")
    assert {k: baseline.data.params[f"xgb_{k}"] for k in ("max_depth", "learning_rate", "min_child_weight")} == {
        k: str(CREDIT_DEFAULT_PARAMS[k]) for k in ("max_depth", "learning_rate", "min_child_weight")}


def test_fairness_figures_hand_computed_and_on_the_card() -> None:
    """Approved = PD below the threshold; AIR = lowest / highest band approval; gaps = highest - lowest
    TPR (defaulters declined) and FPR (repayers declined); an unstated band is left out."""
    from riskloop.models.fairness import fairness_report
    from training import card

    rows = [  # band, label, score
        ("a", 1, 0.9), ("a", 0, 0.1), ("a", 0, 0.1), ("a", 0, 0.6),  # approved 2/4, TPR 1, FPR 1/3
        ("b", 1, 0.1), ("b", 0, 0.1), ("b", 0, 0.1), ("b", 1, 0.7),  # approved 3/4, TPR 1/2, FPR 0
        ("not_stated", 1, 0.9),
    ]
    f = fairness_report(pd.DataFrame(rows, columns=["age_band", "label", "score"]), approve_below=0.5)
    assert set(f.groups) == {"a", "b"}
    assert f.air == pytest.approx(0.5 / 0.75) and f.tpr_gap == pytest.approx(0.5) and f.fpr_gap == pytest.approx(1 / 3)
    assert f.metrics()["approval_rate.b"] == pytest.approx(0.75)
    lines = "\n".join(card._fairness(f))
    assert "| a | 4 | 1 | 0.5000 | 1.0000 | 0.3333 |" in lines and "Adverse impact ratio" in lines
    assert "0.6667" in lines and "four-fifths" in lines


def test_a_training_summary_is_json_even_with_a_figure_that_could_not_be_computed() -> None:
    """A DAG task's return value goes to Airflow as strict JSON: a NaN (a fairness ratio on a test window
    whose age bands are all too small to judge) failed the training task after the model was registered."""
    import json

    from training.train import TrainResult

    result = TrainResult(run_id="r", model_name="m", version="2", aliases=("challenger",),
                         metrics={"auc_roc": 0.8, "fairness_air": float("nan")}, features=("x",))
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    assert summary["metrics"] == {"auc_roc": 0.8, "fairness_air": None} and summary["version"] == "2"
