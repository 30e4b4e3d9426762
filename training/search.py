"""Bounded hyperparameter search, one nested MLflow run per trial, selecting on validation only.

Optuna's TPE sampler with a fixed seed proposes ``n_trials`` XGBoost configurations (the first is
riskloop's defaults); each is fitted
on the older part of the training window and scored on its newest part (the validation rows,
labels as known at the training moment). The test window is never touched here: the caller fits
the final model with the selected parameters and scores the test set once, in the parent run.
Trials run one after another, so the same data and seed give the same trials and the same choice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAX_TRIALS = 200  # "bounded": a typo of --search 2000 should not book the cluster for a day


@dataclass(frozen=True)
class Objective:
    """The validation metric a search optimises."""

    metric: str
    direction: str  # "maximize" or "minimize"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


# Fraud: average precision (the handbook's threshold-free metric for an imbalanced problem).
# Credit: the Brier score, a proper scoring rule that rewards calibration as well as ranking.
FRAUD_OBJECTIVE = Objective("average_precision", "maximize")
CREDIT_OBJECTIVE = Objective("brier", "minimize")


def suggest(trial: Any, fixed: set[str]) -> dict[str, Any]:
    """The search space (ranges a tree ensemble of this size is sensible in), minus ``fixed`` keys:
    a parameter the caller set (``--param``) is held at its value in every trial."""
    space: dict[str, Callable[[], Any]] = {
        "n_estimators": lambda: trial.suggest_int("n_estimators", 50, 400, step=50),
        "max_depth": lambda: trial.suggest_int("max_depth", 2, 8),
        "learning_rate": lambda: trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "min_child_weight": lambda: trial.suggest_float("min_child_weight", 1.0, 50.0, log=True),
        "subsample": lambda: trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": lambda: trial.suggest_float("colsample_bytree", 0.5, 1.0),
    }
    return {name: draw() for name, draw in space.items() if name not in fixed}


@dataclass(frozen=True)
class SearchResult:
    """The selected trial: its parameters (the searched ones) and its validation metrics."""

    params: dict[str, Any]
    best_trial: int
    best_value: float
    valid_metrics: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)
    sampler: str = "optuna TPE"

    def summary(self, objective: Objective) -> dict[str, Any]:
        """What the model card and the parent run say about the search."""
        return {"trials": len(self.trials), "sampler": self.sampler, "metric": f"valid_{objective.metric}",
                "direction": objective.direction, "best_trial": self.best_trial, "best_value": self.best_value}


def run_search(n_trials: int, validate: Callable[[dict[str, Any]], dict[str, float]], objective: Objective, *,
               fixed: dict[str, Any], seed: int, log_params: Callable[[dict[str, Any]], dict[str, Any]],
               on_trial: Callable[[int, float, float], None] | None = None,
               defaults: dict[str, Any] | None = None) -> SearchResult:
    """Run ``n_trials`` trials as nested runs of the active MLflow run; return the best on validation.

    ``validate(params)`` fits on the training part and returns validation metrics (keys without
    prefix); ``log_params(params)`` gives the run params of a configuration (the caller's naming);
    ``on_trial(number, value, best)`` reports progress; ``defaults`` are the model's own defaults over
    :data:`riskloop.models.classifier.DEFAULT_PARAMS` (trial 0 is the configuration training without a search uses).
    """
    import mlflow
    import optuna

    if not 1 <= n_trials <= MAX_TRIALS:
        raise ValueError(f"the search takes 1 to {MAX_TRIALS} trials, got {n_trials}")
    from riskloop.models.classifier import DEFAULT_PARAMS

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction=objective.direction, sampler=sampler)
    # Trial 0 is riskloop's default configuration: the search can only ever choose something at
    # least as good on validation as training without a search would have used.
    study.enqueue_trial({k: v for k, v in {**DEFAULT_PARAMS, **(defaults or {})}.items() if k not in fixed})
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for _ in range(n_trials):
        trial = study.ask()
        params = suggest(trial, set(fixed))
        with mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True) as run:
            mlflow.set_tag("riskloop.search_trial", str(trial.number))
            mlflow.log_params(log_params({**fixed, **params}))
            valid = validate({**fixed, **params})
            value = valid.get(objective.metric, math.nan)
            mlflow.log_metrics({f"valid_{k}": v for k, v in valid.items() if not math.isnan(v)})
        if math.isnan(value):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d: validation %s undefined", trial.number, objective.metric)
        else:
            study.tell(trial, value)
            if best is None or objective.better(value, best["value"]):
                best = {"number": trial.number, "value": value, "params": params, "valid": valid}
        trials.append({"number": trial.number, "run_id": run.info.run_id, "params": params, "value": value})
        log.info("trial %d/%d: valid_%s=%.5f (best %.5f, trial %s)", trial.number + 1, n_trials, objective.metric,
                 value, best["value"] if best else math.nan, best["number"] if best else None)
        if on_trial is not None:
            on_trial(trial.number, value, best["value"] if best else math.nan)
    if best is None:
        raise ValueError(f"no trial produced a validation {objective.metric}: the validation rows need both classes")
    return SearchResult(params=best["params"], best_trial=best["number"], best_value=best["value"],
                        valid_metrics=best["valid"], trials=trials)
