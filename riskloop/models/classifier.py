"""The XGBoost classifier both models use, fitted reproducibly.

Same data + same seed must give the same model bytes: the promotion gate and the audit trail
rely on a retrain being an exact reproduction. Hence ``tree_method="hist"`` with a fixed
thread count and seed, and inputs cast to one float dtype in a fixed column order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from distributed import Client

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 200,
    "max_depth": 4,
    "learning_rate": 0.1,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
}
FIXED_PARAMS: dict[str, Any] = {"tree_method": "hist", "n_jobs": 2, "eval_metric": "logloss"}

# The credit model's defaults (over DEFAULT_PARAMS). It learns from a few thousand applications
# (about one per customer), where the fraud defaults above (200 trees of depth 4 at rate 0.1)
# overfit and come out over-confident (expected calibration error ~0.04 on fresh applications).
# Shallow, slower trees on leaves of weight >= 10 are both better calibrated and better ranked
# there, and beat post-hoc Platt or isotonic calibration fitted on the ~800 validation rows such
# a data set leaves (the fitted map carries those rows' noise): bench/credit_calibration.py,
# figures in docs/benchmarks/history.md ("Credit calibration").
CREDIT_DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 200,
    "max_depth": 2,
    "learning_rate": 0.05,
    "min_child_weight": 10.0,
}

# Directions the credit domain demands (+1: more of it never lowers the risk, -1: never raises
# it). Without them a tree may learn a dip (say, 3 delinquencies scoring safer than 2) from noise,
# and a reason code built on it could not be stated on an adverse-action notice.
CREDIT_MONOTONE: dict[str, int] = {
    "n_delinquencies": 1, "debt_to_income": 1, "utilization": 1,
    "annual_income": -1, "credit_history_months": -1,
}


def monotone_constraints(features: list[str], directions: dict[str, int]) -> dict[str, int]:
    """XGBoost's ``monotone_constraints`` (by feature name) for the ``features`` the model has."""
    return {name: directions[name] for name in features if name in directions}


def design_matrix(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The model input: exactly ``features``, in that order, as float64 (NaN = missing)."""
    return frame[features].astype("float64")


def fit(x: pd.DataFrame, y: pd.Series | np.ndarray, params: dict[str, Any] | None = None,
        seed: int = 42) -> Any:
    """Fit an ``xgboost.XGBClassifier``; ``params`` override :data:`DEFAULT_PARAMS`."""
    import xgboost as xgb

    merged = {**DEFAULT_PARAMS, **(params or {}), **FIXED_PARAMS, "random_state": seed}
    model = xgb.XGBClassifier(**merged)
    model.fit(x, np.asarray(y, dtype=np.int64))
    return model


def fit_dask(x: pd.DataFrame, y: pd.Series | np.ndarray, client: "Client", params: dict[str, Any] | None = None,
             seed: int = 42, npartitions: int | None = None) -> Any:
    """Fit the same classifier with ``xgboost.dask`` on the workers of ``client``'s cluster.

    Each worker trains on its partitions and the workers all-reduce the histograms, so the
    result is close to, not byte-identical with, :func:`fit` (the quality test checks it). The
    fitted booster is brought back into a plain ``XGBClassifier``: MLflow logs, and serving loads,
    exactly the same kind of model whichever way it was trained. Threads per worker are the
    worker's own (``n_jobs`` is left to the cluster).
    """
    import dask.dataframe as dd
    import xgboost as xgb
    from xgboost import dask as dxgb

    merged = {**DEFAULT_PARAMS, **(params or {}), **FIXED_PARAMS, "random_state": seed}
    merged.pop("n_jobs")
    frame = x.assign(__label__=np.asarray(y, dtype=np.int64))
    if npartitions is None:
        npartitions = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    # One frame, split once: features and label share their partitions, so xgboost.dask needs
    # no shuffle to align them.
    ddf = dd.from_pandas(frame, npartitions=npartitions, sort=False)
    dask_model = dxgb.DaskXGBClassifier(**merged)
    dask_model.client = client
    dask_model.fit(ddf[list(x.columns)], ddf["__label__"])
    local = xgb.XGBClassifier(**{**merged, "n_jobs": FIXED_PARAMS["n_jobs"]})
    local.load_model(bytearray(dask_model.get_booster().save_raw(raw_format="ubj")))
    return local


def model_bytes(model: Any) -> bytes:
    """The booster serialised (UBJSON): what "identical model" means in tests and audits."""
    return bytes(model.get_booster().save_raw(raw_format="ubj"))


def effective_params(params: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    """Every hyper-parameter the fit used, for logging."""
    return {**DEFAULT_PARAMS, **(params or {}), **FIXED_PARAMS, "random_state": seed}
