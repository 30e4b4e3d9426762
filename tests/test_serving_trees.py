"""serving.trees: the numpy walk of a booster gives XGBoost's own score and Saabas contributions."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from serving.trees import compile_booster


def _booster(objective: str = "binary:logistic", n: int = 2000, seed: int = 0) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values take each split's default branch
    signal = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 3]) - np.isnan(x[:, 5])
    y = (signal + rng.normal(size=n) > 1.0).astype(float)
    params = {"objective": objective, "max_depth": 4, "eta": 0.3, "tree_method": "hist", "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=y, missing=np.nan), num_boost_round=40)
    test = rng.normal(size=(300, 8))
    test[rng.random(test.shape) < 0.25] = np.nan
    test[:5] = x[:5]  # values equal to training points sit exactly on split thresholds
    return booster, test


def test_score_and_contributions_equal_xgboost() -> None:
    booster, rows = _booster()
    compiled = compile_booster(booster)
    assert compiled is not None
    expected_scores = booster.inplace_predict(rows)
    expected = booster.predict(xgb.DMatrix(rows, missing=np.nan), pred_contribs=True, approx_contribs=True)
    for row, score, contribs in zip(rows, expected_scores, expected, strict=True):
        got_score, got = compiled.predict(row)
        assert got_score == pytest.approx(float(score), abs=1e-6)
        np.testing.assert_allclose(got, contribs, atol=1e-5)  # XGBoost sums in float32
    # The contributions add up to the margin, as XGBoost's do.
    got_score, got = compiled.predict(rows[0])
    assert 1 / (1 + np.exp(-got.sum())) == pytest.approx(got_score, abs=1e-9)


def test_other_objectives_are_left_to_xgboost() -> None:
    booster, _ = _booster(objective="reg:squarederror")
    assert compile_booster(booster) is None
