"""Evaluation metrics of the fraud and credit models.

The fraud metrics follow the Fraud Detection Handbook (Le Borgne et al., chapter 4):
threshold-free AUC ROC and average precision, and the operational "card precision top-k":
investigators check k cards a day, so what matters is how many of those are compromised.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _one_class(y_true: np.ndarray) -> bool:
    return len(np.unique(y_true)) < 2


def auc_roc(y_true: np.ndarray | pd.Series, y_score: np.ndarray | pd.Series) -> float:
    """Area under the ROC curve; NaN when the labels hold a single class (undefined)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true)
    return math.nan if _one_class(y) else float(roc_auc_score(y, np.asarray(y_score)))


def average_precision(y_true: np.ndarray | pd.Series, y_score: np.ndarray | pd.Series) -> float:
    """Average precision (area under the precision-recall curve); NaN without positives."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y_true)
    return math.nan if not y.any() else float(average_precision_score(y, np.asarray(y_score)))


def brier(y_true: np.ndarray | pd.Series, y_prob: np.ndarray | pd.Series) -> float:
    """Mean squared error of the predicted probabilities (calibration + sharpness)."""
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(np.asarray(y_true), np.asarray(y_prob)))


def _binned(y_true: np.ndarray | pd.Series, y_prob: np.ndarray | pd.Series, n_bins: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores clipped to [0, 1], labels, and each row's equal-width bin: the one binning of the ECE."""
    p = np.clip(np.asarray(y_prob, dtype=float), 0.0, 1.0)
    return p, np.asarray(y_true, dtype=float), np.minimum((p * n_bins).astype(int), n_bins - 1)


def calibration_table(y_true: np.ndarray | pd.Series, y_prob: np.ndarray | pd.Series,
                      n_bins: int = 10) -> pd.DataFrame:
    """Equal-width probability bins: rows, mean predicted and observed rate (the calibration curve)."""
    p, y, bins = _binned(y_true, y_prob, n_bins)
    frame = pd.DataFrame({"bin": bins, "p": p, "y": y})
    table = frame.groupby("bin").agg(n=("y", "size"), mean_predicted=("p", "mean"), observed=("y", "mean"))
    return table.reset_index()


def expected_calibration_error(y_true: np.ndarray | pd.Series, y_prob: np.ndarray | pd.Series,
                               n_bins: int = 10) -> float:
    """ECE: the row-weighted mean |observed - predicted| over :func:`calibration_table`'s bins."""
    table = calibration_table(y_true, y_prob, n_bins)
    if table.empty:
        return math.nan
    return float((table["n"] * (table["observed"] - table["mean_predicted"]).abs()).sum() / table["n"].sum())


def _binned_ece(bins: np.ndarray, p: np.ndarray, y: np.ndarray, weights: np.ndarray, n_bins: int) -> float:
    """:func:`expected_calibration_error` of rows counted ``weights`` times (a bootstrap resample)."""
    n = np.bincount(bins, weights=weights, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=weights * y, minlength=n_bins)
                 - np.bincount(bins, weights=weights * p, minlength=n_bins))
    return float(gap.sum() / n.sum())


def ece_interval(y_true: np.ndarray | pd.Series, y_prob: np.ndarray | pd.Series, n_bins: int = 10,
                 resamples: int = 200, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap percentile interval of :func:`expected_calibration_error` over the rows.

    Why: on a few thousand rows the ECE moves by about its own size from sampling alone, so a
    run's single figure cannot say whether a goal like "ECE <= 0.02" is met; the interval says how
    far it could be off. Rows are resampled with replacement (bins fixed by each row's score, the
    ECE itself unchanged); the ECE of a resample is never below the true one on average, so the
    interval leans high, never flatters. (NaN, NaN) without rows. Deterministic for a ``seed``.
    """
    p, y, bins = _binned(y_true, y_prob, n_bins)
    if not len(p):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n = len(p)
    draws = [_binned_ece(bins, p, y, np.bincount(rng.integers(0, n, n), minlength=n).astype(float), n_bins)
             for _ in range(resamples)]
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def _ap_categories(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows as the categories a bootstrap of average precision needs: ``sizes`` alternating
    [negatives up to and including positive tie group j, positives of group j] for each tie group j
    holding a positive (score descending), then the negatives after the last one; and ``is_pos``.

    Why: AP changes only at the ends of tie groups that hold a positive, where it needs the
    positives and all rows seen so far; negatives between two such ends count only as their sum.
    Resampling rows with replacement gives multinomial counts, and sums of multinomial counts over
    blocks are again multinomial, so drawing the blocks' counts directly is the row bootstrap
    exactly, in O(positives) instead of O(rows) per resample."""
    order = np.argsort(-y_score, kind="mergesort")
    s, y = y_score[order], y_true[order]
    group = np.r_[0, np.cumsum(s[1:] != s[:-1])]
    pos = np.bincount(group, weights=y).astype(np.int64)
    neg = np.bincount(group, weights=1 - y).astype(np.int64)
    has_pos = np.flatnonzero(pos > 0)
    # negatives after group j-1's end up to and including group j's (seen at its end)
    neg_before = np.diff(np.r_[0, np.cumsum(neg)[has_pos]])
    trailing = neg[has_pos[-1] + 1:].sum() if len(has_pos) else neg.sum()
    sizes = np.empty(2 * len(has_pos) + 1, dtype=np.int64)
    sizes[0:-1:2], sizes[1:-1:2], sizes[-1] = neg_before, pos[has_pos], trailing
    is_pos = np.zeros(len(sizes), dtype=bool)
    is_pos[1:-1:2] = True
    return sizes, is_pos


def _ap_of_counts(counts: np.ndarray, is_pos: np.ndarray) -> np.ndarray:
    """Average precision of each row of category ``counts`` (:func:`_ap_categories`)."""
    seen = np.cumsum(counts, axis=1)[:, is_pos].astype(float)
    tp = np.cumsum(counts[:, is_pos], axis=1).astype(float)
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    step = counts[:, is_pos]
    total = tp[:, -1]
    return np.divide((step * precision).sum(axis=1), total, out=np.full(len(total), np.nan), where=total > 0)


def average_precision_interval(y_true: np.ndarray | pd.Series, y_score: np.ndarray | pd.Series,
                               resamples: int = 200, level: float = 0.95,
                               seed: int = 0) -> tuple[float, float]:
    """Bootstrap percentile interval of :func:`average_precision` over the rows.

    Why: realised AP on a few dozen matured frauds moves by 0.1 and more from sampling alone, so a
    monitor that pages on "AP fell by more than the margin" would page on noise; the interval says
    how far the figure could be off. The row bootstrap, drawn as multinomial counts of
    :func:`_ap_categories` (a million rows in about a second); resamples without a positive are
    skipped. (NaN, NaN) without positives (or with too few for any resample to hold one).
    Deterministic for a ``seed``."""
    y, s = np.asarray(y_true).astype(np.int64), np.asarray(y_score, dtype=float)
    if not y.any():
        return math.nan, math.nan
    sizes, is_pos = _ap_categories(y, s)
    n = int(sizes.sum())
    counts = np.random.default_rng(seed).multinomial(n, sizes / n, size=resamples)
    values = _ap_of_counts(counts, is_pos)
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def card_precision_at_k_per_day(df: pd.DataFrame, k: int = 100, *, customer_col: str = "customer_id",
                                time_col: str = "event_timestamp", score_col: str = "score",
                                label_col: str = "label") -> pd.Series:
    """Card precision top-k of each UTC day, as the handbook computes it.

    Per day: each card gets its highest score and its highest label of the day; the k cards
    with the highest scores are "investigated"; precision = compromised cards among them / k
    (always divided by k, as in the handbook, even on a day with fewer than k cards). Cards
    found compromised on a previous day are removed from later days: they would be blocked.
    Ties between equal scores are broken by card id, so the metric is deterministic.
    """
    if k <= 0:
        raise ValueError("k must be positive")
    days = pd.to_datetime(df[time_col], utc=True).dt.floor("D")
    frame = pd.DataFrame({"day": days, "card": df[customer_col].to_numpy(),
                          "score": df[score_col].to_numpy(), "label": df[label_col].to_numpy()})
    detected: set[object] = set()
    result: dict[pd.Timestamp, float] = {}
    for day, day_df in frame.groupby("day", sort=True):
        day_df = day_df[~day_df["card"].isin(detected)]
        cards = day_df.groupby("card", sort=True).agg(score=("score", "max"), label=("label", "max"))
        cards = cards.reset_index().sort_values(["score", "card"], ascending=[False, True], kind="mergesort")
        top = cards.head(k)
        hits = top.loc[top["label"] == 1, "card"]
        result[day] = len(hits) / k
        detected.update(hits)
    return pd.Series(result, name=f"card_precision_at_{k}", dtype=float)


def card_precision_at_k(df: pd.DataFrame, k: int = 100, **columns: str) -> float:
    """Mean over days of :func:`card_precision_at_k_per_day` (NaN for an empty frame)."""
    per_day = card_precision_at_k_per_day(df, k, **columns)
    return float(per_day.mean()) if len(per_day) else math.nan


def fraud_metrics(predictions: pd.DataFrame, k: int = 100) -> dict[str, float]:
    """The handbook's three fraud metrics of a scored frame (``label``, ``score``,
    ``customer_id``, ``event_timestamp``): one definition for training runs and benchmarks."""
    return {
        "auc_roc": auc_roc(predictions["label"], predictions["score"]),
        "average_precision": average_precision(predictions["label"], predictions["score"]),
        f"card_precision_at_{k}": card_precision_at_k(predictions, k=k),
    }


def credit_metrics(scored: pd.DataFrame) -> dict[str, float]:
    """AUC, Brier, ECE of a scored credit frame (``label``, ``score``); with the simulator's true PD
    (``true_default_probability``), the oracle's AUC and ECE and the model's share of the oracle's AUC.
    One definition for training runs and the promotion gate."""
    results = {"auc_roc": auc_roc(scored["label"], scored["score"]),
               "brier": brier(scored["label"], scored["score"]) if len(scored) else math.nan,
               "ece": expected_calibration_error(scored["label"], scored["score"])}
    if "true_default_probability" in scored and len(scored) and scored["true_default_probability"].notna().all():
        # The oracle: the simulator's true PD ranks the same rows as well as anything can;
        # the model is judged by how much of that it recovers.
        oracle = auc_roc(scored["label"], scored["true_default_probability"])
        results.update(oracle_auc_roc=oracle, auc_to_oracle=results["auc_roc"] / oracle,
                       # The true PD's own ECE on these rows: what sampling noise alone gives a
                       # perfectly calibrated model.
                       oracle_ece=expected_calibration_error(scored["label"], scored["true_default_probability"]))
    # The ECE's sampling uncertainty (bootstrap, 95 %): whether the goal is met or only looks so.
    results["ece_ci95_low"], results["ece_ci95_high"] = ece_interval(scored["label"], scored["score"])
    return results
