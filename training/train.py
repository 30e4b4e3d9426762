"""Train, evaluate, log and register the fraud and credit models.

Both trainings end the same way (:func:`_train`): one MLflow run in the experiment named like the
model, holding the parameters, the data set's fingerprint, the data-contract results, the
validation and test metrics, the test predictions, the evaluation plots, the model card, a
reference sample of the training inputs (for the drift monitor) and the model, registered under
``settings.<kind>_model_name`` with the ``challenger`` alias.

Model selection only ever looks at validation rows: the newest ``valid_fraction`` of the training
window (labels as known at the training moment). With ``search_trials`` a bounded Optuna search
runs as nested runs of the parent run; the parent then fits the final model on the whole training
window with the selected parameters and scores the test window once. With
``RISKLOOP_DASK_SCHEDULER`` (or a ``dask_client``) every fit runs on ``xgboost.dask``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from riskloop.core.config import Settings
from riskloop.core.identity import Principal
from riskloop.features import datasets
from riskloop.features.store import CREDIT_SERVICE, FRAUD_SERVICE, feature_store
from riskloop.governance.authors import record_author
from riskloop.models import artifacts, fairness, metrics, split
from riskloop.models import classifier as model
from training import card, plots, search, tracking

if TYPE_CHECKING:
    from distributed import Client
    from feast import FeatureStore

log = logging.getLogger(__name__)

VALID_PREFIX = "valid_"
CALIBRATION_ARTIFACT = "evaluation/calibration.parquet"


class Progress(Protocol):
    """What a caller (the CLI's progress bar) is told while a training runs."""

    def run_started(self, url: str) -> None: ...

    def trial_finished(self, number: int, total: int, value: float, best: float) -> None: ...


class _Silent:
    def run_started(self, url: str) -> None:
        log.info("training run: %s", url)

    def trial_finished(self, number: int, total: int, value: float, best: float) -> None:
        return None


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
    run_url: str = ""
    valid_metrics: dict[str, float] = field(default_factory=dict)
    search: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """What a DAG task returns (its XCom): JSON, so a figure that could not be computed (a fairness
        ratio with every group too small, say: NaN) is null."""
        return {"run_id": self.run_id, "version": self.version, "run_url": self.run_url, "search": self.search,
                "metrics": {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self.metrics.items()}}


@dataclass(frozen=True)
class _Job:
    """One model's training set-up: the data (both frames carry ``label``) and how to judge it."""

    kind: str
    model_name: str
    service: str
    features: list[str]
    train: pd.DataFrame
    test: pd.DataFrame
    prediction_cols: list[str]
    evaluate: Callable[[pd.DataFrame], dict[str, float]]
    objective: search.Objective
    run_params: dict[str, Any]
    label_delay: str
    monotone: dict[str, int] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # this model's defaults over model.DEFAULT_PARAMS
    log_calibration: bool = False  # log the test calibration curve as a table (a PD must be calibrated)
    # Per test row, the applicant's protected attribute (never a model input): the run's fairness figures.
    protected: pd.Series | None = None


def _require_both_classes(labels: pd.Series, what: str) -> None:
    if labels.nunique() < 2:
        raise ValueError(f"{what} holds a single class ({labels.unique().tolist()}): widen the windows")


def train_fraud(settings: Settings, params: dict[str, Any] | None = None, *, seed: int = 42,
                train_days: int = 7, test_days: int = 7, delay_days: int | None = None,
                maturity_days: int | None = None, label_cutoff_days: int | None = None,
                reference_rows: int = 5000, store: "FeatureStore | None" = None, search_trials: int = 0,
                valid_fraction: float = 0.25, progress: Progress | None = None,
                dask_client: "Client | None" = None, principal: Principal | None = None,
                triggered_by: str | None = None) -> TrainResult:
    """Train the fraud model on the latest windows of ``marts.fct_transactions`` that fit.

    ``delay_days`` and ``maturity_days`` default to ``settings.label_delay_days``; see
    :mod:`riskloop.models.split` for the layout and the label rules. ``search_trials`` > 0 runs a bounded
    hyperparameter search on validation first (``params`` stay fixed in it).
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
    run_params = {
        **windows.as_params(),
        "train_frauds_known": int(train["label"].sum()),
        "train_frauds_final": int(train["is_fraud"].sum()),
        "label_delay_days": delay,
    }
    job = _Job(kind="fraud", model_name=settings.fraud_model_name, service=FRAUD_SERVICE,
               features=datasets.fraud_feature_names(store), train=train, test=test,
               prediction_cols=["transaction_id", "customer_id", "terminal_id", "event_timestamp", "label"],
               evaluate=metrics.fraud_metrics, objective=search.FRAUD_OBJECTIVE, run_params=run_params,
               label_delay=(f"frauds count as known {delay} days after the payment at most; training labels are "
                            f"those known at {windows.label_cutoff.isoformat()} "
                            f"({run_params['train_frauds_known']} of {run_params['train_frauds_final']} "
                            "training-window frauds)"))
    return _train(settings, job, params, seed, search_trials=search_trials, valid_fraction=valid_fraction,
                  reference_rows=reference_rows, progress=progress, dask_client=dask_client, principal=principal,
                  triggered_by=triggered_by)


def train_credit(settings: Settings, params: dict[str, Any] | None = None, *, seed: int = 42,
                 test_fraction: float = 0.25, reference_rows: int = 5000,
                 store: "FeatureStore | None" = None, search_trials: int = 0, valid_fraction: float = 0.25,
                 progress: Progress | None = None, dask_client: "Client | None" = None,
                 principal: Principal | None = None, triggered_by: str | None = None) -> TrainResult:
    """Train the probability-of-default model on every application with an observed outcome;
    the newest ``test_fraction`` of applications is the test set. ``params`` (and a search) override
    :data:`riskloop.models.classifier.CREDIT_DEFAULT_PARAMS`."""
    store = store or feature_store(settings)
    frame = datasets.credit_dataset(store)
    frame = frame.assign(label=frame[datasets.CREDIT_LABEL].astype("int64"))
    train, test, boundary = split.split_by_time(frame, test_fraction)
    groups = datasets.protected_groups(settings).set_index("application_id")[fairness.PROTECTED_ATTRIBUTE]
    _require_both_classes(train["label"], "the credit training set")
    # Repeat applicants: a customer's latent risk is shared by all their applications, but the
    # features are the application's own and the outcome depends on nothing else, so a customer
    # seen in training is no leak (bench/credit_volume.py measures it). Logged so a run shows it.
    seen = test["customer_id"].isin(set(train["customer_id"])).mean() if len(test) else math.nan
    features = datasets.service_features(store, CREDIT_SERVICE)
    monotone = model.monotone_constraints(features, model.CREDIT_MONOTONE)
    # Monotone constraints by default (a caller's own monotone_constraints wins).
    params = {"monotone_constraints": monotone, **(params or {})}
    delay_days = (pd.to_datetime(train["observed_at"], utc=True) - train["event_timestamp"]).dt.days
    job = _Job(kind="credit", model_name=settings.credit_model_name, service=CREDIT_SERVICE, features=features,
               train=train, test=test, prediction_cols=["application_id", "customer_id", "event_timestamp", "label"],
               evaluate=metrics.credit_metrics, objective=search.CREDIT_OBJECTIVE,
               run_params={"test_start": boundary.isoformat(),
                           "test_end": (test["event_timestamp"].max() + pd.Timedelta(seconds=1)).isoformat(),
                           "test_fraction": test_fraction,
                           "test_applicants_seen_in_training": round(float(seen), 4)},
               label_delay=(f"an outcome is observed whole, {delay_days.min()} to {delay_days.max()} days after "
                            "the application; only applications with an observed outcome are used"),
               monotone=params["monotone_constraints"] if isinstance(params["monotone_constraints"], dict) else {},
               defaults=model.CREDIT_DEFAULT_PARAMS, log_calibration=True,
               protected=test["application_id"].map(groups))
    return _train(settings, job, params, seed, search_trials=search_trials, valid_fraction=valid_fraction,
                  reference_rows=reference_rows, progress=progress, dask_client=dask_client, principal=principal,
                  triggered_by=triggered_by)


@contextmanager
def _dask(settings: Settings, client: "Client | None") -> Iterator["Client | None"]:
    """The caller's Dask client, else one connected to ``settings.dask_scheduler``, else None."""
    if client is not None or not settings.dask_scheduler:
        yield client
        return
    from distributed import Client

    log.info("training on the Dask cluster at %s", settings.dask_scheduler)
    with Client(settings.dask_scheduler) as connected:
        yield connected


def _backend(client: "Client | None") -> str:
    if client is None:
        return f"xgboost, single process ({model.FIXED_PARAMS['n_jobs']} threads)"
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return f"xgboost.dask on {client.scheduler.address} ({len(workers)} workers)"


def _train(settings: Settings, job: _Job, params: dict[str, Any] | None, seed: int, *, search_trials: int,
           valid_fraction: float, reference_rows: int, progress: Progress | None,
           dask_client: "Client | None", principal: Principal | None = None,
           triggered_by: str | None = None) -> TrainResult:
    """Fit, log and register one model. ``principal`` (who trains; for a DAG run its service principal,
    with ``triggered_by`` the person who triggered the run) is recorded as the version's author
    (:mod:`riskloop.governance.authors`); without one the author is unknown and no reviewer can approve it."""
    import mlflow
    import mlflow.xgboost
    from mlflow.models import infer_signature

    from riskloop.data import contracts
    from riskloop.models.registry import mlflow_client

    progress = progress or _Silent()
    fixed = dict(params or {})
    sub_train, valid, valid_start = split.split_by_time(job.train, valid_fraction)
    _require_both_classes(sub_train["label"], "the training rows before the validation rows")
    if search_trials:
        _require_both_classes(valid["label"], "the validation rows (newest part of the training window)")
    x_train = model.design_matrix(job.train, job.features)
    x_test = model.design_matrix(job.test, job.features)

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = mlflow_client(settings.tracking_uri)
    experiment = mlflow.set_experiment(job.model_name)
    first = not tracking.has_versions(client, job.model_name)
    dataset_hash = tracking.content_hash(x_train)
    contract_runs = contracts.latest_runs(settings)
    commit = tracking.git_commit()
    tags = {"riskloop.feature_service": job.service, "riskloop.train_content_hash": dataset_hash,
            "riskloop.model_name": job.model_name}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for c in contract_runs:
        tags[artifacts.CONTRACT_TAG_PREFIX + c["schema"]] = f"{'passed' if c['success'] else 'failed'} {c['run_at']}"

    def xgb_params(p: dict[str, Any]) -> dict[str, Any]:
        return {f"xgb_{k}": v for k, v in model.effective_params({**job.defaults, **p}, seed).items()}

    with _dask(settings, dask_client) as dask_client_:
        def fit(x: pd.DataFrame, y: pd.Series, p: dict[str, Any]) -> Any:
            p = {**job.defaults, **p}
            if dask_client_ is None:
                return model.fit(x, y, p, seed)
            return model.fit_dask(x, y, dask_client_, p, seed)

        def validate(p: dict[str, Any]) -> dict[str, float]:
            clf = fit(model.design_matrix(sub_train, job.features), sub_train["label"], p)
            scores = clf.predict_proba(model.design_matrix(valid, job.features))[:, 1] if len(valid) else []
            return job.evaluate(valid.assign(score=scores))

        backend = _backend(dask_client_)
        with mlflow.start_run(run_name=f"{job.model_name}-train") as run:
            url = tracking.run_url(settings.tracking_uri, experiment.experiment_id, run.info.run_id)
            progress.run_started(url)
            mlflow.set_tags(tags)
            found: search.SearchResult | None = None
            if search_trials:
                found = search.run_search(
                    search_trials, validate, job.objective, fixed=fixed, seed=seed, log_params=xgb_params,
                    defaults=job.defaults,
                    on_trial=lambda n, v, b: progress.trial_finished(n, search_trials, v, b))
                chosen, valid_results = {**fixed, **found.params}, found.valid_metrics
            else:
                chosen, valid_results = fixed, validate(fixed)
            clf = fit(x_train, job.train["label"], chosen)
            scores = clf.predict_proba(x_test)[:, 1] if len(x_test) else []
            predictions = job.test[job.prediction_cols].assign(score=scores)
            results = job.evaluate(job.test.assign(score=scores))
            fair = None
            if job.protected is not None and len(x_test):
                fair = fairness.fairness_report(
                    job.test.assign(score=scores, **{fairness.PROTECTED_ATTRIBUTE: job.protected.to_numpy()}),
                    settings.fairness_approve_below, min_group=settings.fairness_min_group)
                results.update(fair.metrics())
            all_params = {
                **xgb_params(chosen),
                **job.run_params,
                **tracking.dataset_params("train", job.train),
                **tracking.dataset_params("valid", valid),
                **tracking.dataset_params("test", job.test),
                "valid_fraction": valid_fraction,
                "seed": seed,
                "features": ",".join(job.features),
                "n_features": len(job.features),
                "feature_service": job.service,
                "train_content_hash": dataset_hash,
                "training_backend": backend,
                "search_trials": search_trials,
            }
            if found is not None:
                summary = found.summary(job.objective)
                all_params.update(search_metric=summary["metric"], search_best_trial=found.best_trial)
            mlflow.log_params(all_params)
            mlflow.log_metrics({k: v for k, v in results.items() if not math.isnan(v)})
            mlflow.log_metrics({VALID_PREFIX + k: v for k, v in valid_results.items() if not math.isnan(v)})
            x_eval, y_eval, s_eval = ((x_test, job.test["label"], scores) if len(x_test)
                                      else (x_train, job.train["label"], clf.predict_proba(x_train)[:, 1]))
            importance = plots.log_plots(clf, x_eval, y_eval.to_numpy(), s_eval, f"{job.model_name} ({job.kind})", seed)
            card_text = card.render(card.CardFacts(
                kind=job.kind, model_name=job.model_name, owner=settings.model_owner, run_id=run.info.run_id,
                git_commit=commit, feature_service=job.service, features=job.features, run_params=all_params,
                xgb_params=model.effective_params({**job.defaults, **chosen}, seed), test_metrics=results,
                validation_metrics=valid_results, label_delay=job.label_delay, content_hash=dataset_hash,
                monotone_constraints=job.monotone, feature_importance=importance,
                search=found.summary(job.objective) if found else None, contracts=contract_runs, backend=backend,
                fairness=fair))
            mlflow.log_text(card_text, card.CARD_ARTIFACT)
            example = x_train.head(5)
            signature = infer_signature(example, clf.predict_proba(example)[:, 1])
            info = mlflow.xgboost.log_model(clf, name=artifacts.MODEL_ARTIFACT, signature=signature,
                                            input_example=example, registered_model_name=job.model_name,
                                            model_format="ubj",
                                            # explicit: inferring them costs seconds (a subprocess
                                            # that loads the model) and needs nothing we lack
                                            pip_requirements=mlflow.xgboost.get_default_pip_requirements())
            reference = x_train.sample(n=min(reference_rows, len(x_train)), random_state=seed).sort_index()
            tracking.log_frame(reference, artifacts.REFERENCE_ARTIFACT)
            tracking.log_frame(predictions, artifacts.PREDICTIONS_ARTIFACT)
            if job.log_calibration and len(x_test):
                tracking.log_frame(metrics.calibration_table(job.test["label"], scores), CALIBRATION_ARTIFACT)
    version = str(info.registered_model_version)
    name = job.model_name
    # The reviewer's card (riskloop.governance.review.card, the /review page) shows the version's description.
    client.update_model_version(name, version, description=card_text)
    for key, value in {"feature_service": job.service, "train_content_hash": dataset_hash,
                       "test_start": str(all_params["test_start"]), "test_end": str(all_params["test_end"])}.items():
        client.set_model_version_tag(name, version, key, value)
    if principal is not None:
        record_author(settings, name, version, principal, run_id=run.info.run_id, triggered_by=triggered_by,
                      client=client)
    else:
        log.warning("%s v%s has no recorded author (no principal given): it cannot be approved", name, version)
    aliases = tracking.register_aliases(settings, client, name, version, first,
                                        actor=principal.actor if principal is not None else None)
    log.info("%s v%s run %s: test %s, validation %s", name, version, run.info.run_id, results, valid_results)
    return TrainResult(run_id=run.info.run_id, model_name=name, version=version, aliases=tuple(aliases),
                       metrics=results, features=tuple(job.features), params=all_params, run_url=url,
                       valid_metrics=valid_results, search=found.summary(job.objective) if found else None)
