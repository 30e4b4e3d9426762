"""Train, evaluate, log and register the fraud and credit models.

Both trainings end the same way (:func:`_log_and_register`): one MLflow run in the experiment
named like the model, holding the parameters, the data set's fingerprint, the test-window
metrics and predictions, a reference sample of the training inputs (for the drift monitor)
and the model, registered under ``settings.<kind>_model_name`` with the ``challenger`` alias.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from riskloop.config import Settings
from riskloop.features import CREDIT_SERVICE, FRAUD_SERVICE, feature_store
from training import datasets, metrics, model, split, tracking

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a training produced: where it is logged, which version it registered, how good it is."""

    run_id: str
    model_name: str
    version: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    features: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


def _require_both_classes(labels: pd.Series, what: str) -> None:
    if labels.nunique() < 2:
        raise ValueError(f"{what} holds a single class ({labels.unique().tolist()}): widen the windows")


def train_fraud(settings: Settings, params: dict[str, Any] | None = None, *, seed: int = 42,
                train_days: int = 7, test_days: int = 7, delay_days: int | None = None,
                maturity_days: int | None = None, label_cutoff_days: int | None = None,
                reference_rows: int = 5000, store: "FeatureStore | None" = None) -> TrainResult:
    """Train the fraud model on the latest windows of ``marts.fct_transactions`` that fit.

    ``delay_days`` and ``maturity_days`` default to ``settings.label_delay_days``; see
    :mod:`training.split` for the layout and the label rules.
    """
    store = store or feature_store(settings)
    delay = settings.label_delay_days if delay_days is None else delay_days
    data_start, data_end = datasets.transaction_range(settings)
    windows = split.fraud_windows(
        data_start, data_end, train_days=train_days, delay_days=delay, test_days=test_days,
        maturity_days=delay if maturity_days is None else maturity_days, label_cutoff_days=label_cutoff_days)
    log.info("fraud split: %s", windows.as_params())
    frame = datasets.fraud_dataset(store, [(windows.train_start, windows.train_end),
                                           (windows.test_start, windows.test_end)])
    train, test = split.split_fraud(frame, windows, datasets.known_frauds(settings, windows.test_end))
    _require_both_classes(train["label"], "the training window")
    features = datasets.fraud_feature_names(store)

    x_train = model.design_matrix(train, features)
    clf = model.fit(x_train, train["label"], params, seed)
    scores = clf.predict_proba(model.design_matrix(test, features))[:, 1] if len(test) else []
    predictions = test[["transaction_id", "customer_id", "terminal_id", "event_timestamp", "label"]].assign(score=scores)
    results = {
        "auc_roc": metrics.auc_roc(predictions["label"], predictions["score"]),
        "average_precision": metrics.average_precision(predictions["label"], predictions["score"]),
        "card_precision_at_100": metrics.card_precision_at_k(predictions, k=100),
    }
    run_params = {
        **windows.as_params(),
        **tracking.dataset_params("train", train),
        **tracking.dataset_params("test", test),
        "train_frauds_known": int(train["label"].sum()),
        "train_frauds_final": int(train["is_fraud"].sum()),
        "label_delay_days": delay,
    }
    return _log_and_register(settings, settings.fraud_model_name, FRAUD_SERVICE, clf, x_train, features,
                             results, params, seed, run_params, predictions, reference_rows)


def train_credit(settings: Settings, params: dict[str, Any] | None = None, *, seed: int = 42,
                 test_fraction: float = 0.25, reference_rows: int = 5000,
                 store: "FeatureStore | None" = None) -> TrainResult:
    """Train the probability-of-default model on every application with an observed outcome;
    the newest ``test_fraction`` of applications is the test set."""
    store = store or feature_store(settings)
    frame = datasets.credit_dataset(store)
    train, test, boundary = split.split_by_time(frame, test_fraction)
    _require_both_classes(train[datasets.CREDIT_LABEL], "the credit training set")
    features = datasets.service_features(store, CREDIT_SERVICE)

    x_train = model.design_matrix(train, features)
    # Monotone constraints by default (a caller's own monotone_constraints wins).
    params = {"monotone_constraints": model.monotone_constraints(features, model.CREDIT_MONOTONE), **(params or {})}
    clf = model.fit(x_train, train[datasets.CREDIT_LABEL], params, seed)
    probs = clf.predict_proba(model.design_matrix(test, features))[:, 1]
    predictions = test[["application_id", "event_timestamp"]].assign(
        label=test[datasets.CREDIT_LABEL].to_numpy(), score=probs)
    results = {"auc_roc": metrics.auc_roc(predictions["label"], probs),
               "brier": metrics.brier(predictions["label"], probs),
               "ece": metrics.expected_calibration_error(predictions["label"], probs)}
    if "true_default_probability" in test and test["true_default_probability"].notna().all():
        # The oracle: the simulator's true PD ranks the same test set as well as anything can;
        # the model is judged by how much of that it recovers (goal >= 0.97).
        oracle = metrics.auc_roc(predictions["label"], test["true_default_probability"])
        results.update(oracle_auc_roc=oracle, auc_to_oracle=results["auc_roc"] / oracle)
    run_params = {
        "test_start": boundary.isoformat(),
        "test_end": (test["event_timestamp"].max() + pd.Timedelta(seconds=1)).isoformat(),
        "test_fraction": test_fraction,
        **tracking.dataset_params("train", train),
        **tracking.dataset_params("test", test),
    }
    return _log_and_register(settings, settings.credit_model_name, CREDIT_SERVICE, clf, x_train, features,
                             results, params, seed, run_params, predictions, reference_rows)


def _log_and_register(settings: Settings, name: str, service: str, clf: Any, x_train: pd.DataFrame,
                      features: list[str], results: dict[str, float], params: dict[str, Any] | None,
                      seed: int, run_params: dict[str, Any], predictions: pd.DataFrame,
                      reference_rows: int) -> TrainResult:
    import mlflow
    import mlflow.xgboost
    from mlflow.models import infer_signature

    from riskloop.registry import mlflow_client

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = mlflow_client(settings.tracking_uri)
    mlflow.set_experiment(name)
    first = not tracking.has_versions(client, name)
    dataset_hash = tracking.content_hash(x_train)
    all_params = {
        **{f"xgb_{k}": v for k, v in model.effective_params(params, seed).items()},
        **run_params,
        "seed": seed,
        "features": ",".join(features),
        "n_features": len(features),
        "feature_service": service,
        "train_content_hash": dataset_hash,
    }
    tags = {"riskloop.feature_service": service, "riskloop.train_content_hash": dataset_hash,
            "riskloop.model_name": name}
    commit = tracking.git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(run_name=f"{name}-train") as run:
        mlflow.log_params(all_params)
        mlflow.set_tags(tags)
        mlflow.log_metrics({k: v for k, v in results.items() if not math.isnan(v)})
        example = x_train.head(5)
        signature = infer_signature(example, clf.predict_proba(example)[:, 1])
        info = mlflow.xgboost.log_model(clf, name=tracking.MODEL_ARTIFACT, signature=signature,
                                        input_example=example, registered_model_name=name,
                                        model_format="ubj",
                                        # explicit: inferring them costs ~30 s (a subprocess
                                        # that loads the model) and needs nothing we lack
                                        pip_requirements=mlflow.xgboost.get_default_pip_requirements())
        reference = x_train.sample(n=min(reference_rows, len(x_train)), random_state=seed).sort_index()
        tracking.log_frame(reference, tracking.REFERENCE_ARTIFACT)
        tracking.log_frame(predictions, tracking.PREDICTIONS_ARTIFACT)
    version = str(info.registered_model_version)
    for key, value in {"feature_service": service, "train_content_hash": dataset_hash,
                       "test_start": str(run_params["test_start"]), "test_end": str(run_params["test_end"])}.items():
        client.set_model_version_tag(name, version, key, value)
    aliases = tracking.register_aliases(client, name, version, first)
    log.info("%s v%s run %s: %s", name, version, run.info.run_id, results)
    return TrainResult(run_id=run.info.run_id, model_name=name, version=version, aliases=tuple(aliases),
                       metrics=results, features=tuple(features), params=all_params)
