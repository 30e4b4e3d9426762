"""The evaluation plots every training run logs: ROC, precision-recall, calibration, SHAP summary
and score distribution by label.

A reviewer judges a model from these without re-running anything, so they are drawn from the
run's own test predictions and model. They are cheap and deterministic on purpose: the curves are
thinned to a fixed number of points, the SHAP summary uses XGBoost's own exact tree contributions
(``pred_contribs``, no ``shap`` dependency) on a seeded sample, and figures are built on
``matplotlib.figure.Figure`` with the Agg canvas (no pyplot state, no display, safe in workers).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from riskloop.models import metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
CURVE_POINTS = 400  # points kept of a ROC/PR curve: a 1M-row test set would draw 1M vertices
SHAP_SAMPLE = 1000
SHAP_TOP = 15
PLOT_NAMES = ("roc", "precision_recall", "calibration", "shap_summary", "score_distribution")


def _figure(width: float = 5.0, height: float = 4.0) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _thin(*arrays: np.ndarray, points: int = CURVE_POINTS) -> tuple[np.ndarray, ...]:
    """Keep ``points`` evenly spaced vertices of a curve (always its two ends)."""
    n = len(arrays[0])
    if n <= points:
        return arrays
    keep = np.unique(np.linspace(0, n - 1, points).round().astype(int))
    return tuple(a[keep] for a in arrays)


def _both_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def roc(y: np.ndarray, score: np.ndarray, title: str) -> "Figure":
    from sklearn.metrics import roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    if _both_classes(y):
        fpr, tpr, _ = roc_curve(y, score)
        fpr, tpr = _thin(fpr, tpr)
        ax.plot(fpr, tpr, label=f"AUC {metrics.auc_roc(y, score):.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    return fig


def precision_recall(y: np.ndarray, score: np.ndarray, title: str) -> "Figure":
    from sklearn.metrics import precision_recall_curve

    fig = _figure()
    ax = fig.add_subplot()
    if y.any():
        precision, recall, _ = precision_recall_curve(y, score)
        precision, recall = _thin(precision, recall)
        ax.step(recall, precision, where="post", label=f"AP {metrics.average_precision(y, score):.4f}")
    ax.axhline(float(y.mean()) if len(y) else 0.0, linestyle="--", color="grey", linewidth=0.8, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall: {title}", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper right")
    return fig


def calibration(y: np.ndarray, score: np.ndarray, title: str, n_bins: int = 10) -> "Figure":
    table = metrics.calibration_table(y, score, n_bins)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect")
    if len(table):
        ece = metrics.expected_calibration_error(y, score, n_bins)
        ax.plot(table["mean_predicted"], table["observed"], marker="o", label=f"model (ECE {ece:.4f})")
        for row in table.itertuples():
            ax.annotate(str(row.n), (row.mean_predicted, row.observed), fontsize=6, textcoords="offset points",
                        xytext=(3, -8))
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=f"Calibration: {title}",
           xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="upper left")
    return fig


def score_distribution(y: np.ndarray, score: np.ndarray, title: str, bins: int = 50) -> "Figure":
    fig = _figure()
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, name in ((0, "negative"), (1, "positive")):
        values = score[y == label]
        if len(values):
            ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.2, label=f"{name} (n={len(values)})")
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="density (log)", title=f"Score distribution: {title}", xlim=(0, 1))
    ax.legend(loc="upper center")
    return fig


def shap_values(clf: Any, x: pd.DataFrame, seed: int, sample: int = SHAP_SAMPLE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact TreeSHAP contributions (log-odds) of a seeded sample of ``x``: (contributions, sample).

    XGBoost computes them itself (``pred_contribs``); the bias column is dropped.
    """
    import xgboost as xgb

    rows = x.sample(n=min(sample, len(x)), random_state=seed).sort_index() if len(x) else x
    contribs = clf.get_booster().predict(xgb.DMatrix(rows), pred_contribs=True)
    return pd.DataFrame(contribs[:, :-1], columns=x.columns, index=rows.index), rows


def mean_abs_shap(contribs: pd.DataFrame) -> pd.Series:
    """Global importance: mean |contribution| per feature, largest first (ties by name)."""
    importance = contribs.abs().mean()
    return importance.sort_index().sort_values(ascending=False, kind="mergesort")


def shap_summary(contribs: pd.DataFrame, rows: pd.DataFrame, title: str, seed: int, top: int = SHAP_TOP) -> "Figure":
    """A beeswarm-style summary: one row per feature (top ``top`` by mean |SHAP|), one dot per sampled
    payment at its contribution, coloured by the feature's value rank (grey: missing)."""
    order = list(mean_abs_shap(contribs).index[:top])
    fig = _figure(6.0, 0.35 * max(len(order), 4) + 1.2)
    ax = fig.add_subplot()
    rng = np.random.default_rng(seed)
    scatter = None
    for pos, name in enumerate(reversed(order)):
        values = contribs[name].to_numpy()
        raw = rows[name]
        rank = raw.rank(pct=True).to_numpy()
        jitter = rng.uniform(-0.3, 0.3, len(values))
        missing = np.isnan(rank)
        if missing.any():
            ax.scatter(values[missing], pos + jitter[missing], s=4, color="lightgrey")
        scatter = ax.scatter(values[~missing], pos + jitter[~missing], s=4, c=rank[~missing], cmap="coolwarm",
                             vmin=0, vmax=1)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(order)), list(reversed(order)), fontsize=7)
    ax.set(xlabel="SHAP value (contribution to log-odds)", title=f"SHAP summary: {title} (n={len(rows)})")
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="feature value (rank)", ticks=[0, 1], format=lambda v, _: "high" if v else "low")
    return fig


def log_plots(clf: Any, x_eval: pd.DataFrame, y: np.ndarray, score: np.ndarray, title: str,
              seed: int) -> pd.Series:
    """Log the five plots of a run under ``plots/`` and return the mean |SHAP| per feature.

    ``x_eval``/``y``/``score`` are the test set's inputs, labels and scores (the training set when
    there is no test row); must run inside an active MLflow run.
    """
    import mlflow

    y = np.asarray(y, dtype=int)
    score = np.asarray(score, dtype=float)
    contribs, rows = shap_values(clf, x_eval, seed)
    figures = {
        "roc": roc(y, score, title),
        "precision_recall": precision_recall(y, score, title),
        "calibration": calibration(y, score, title),
        "shap_summary": shap_summary(contribs, rows, title, seed),
        "score_distribution": score_distribution(y, score, title),
    }
    for name, fig in figures.items():
        # Figure.savefig with fixed metadata: no timestamp, so the same run draws the same bytes.
        mlflow.log_figure(fig, f"{PLOTS_DIR}/{name}.png", save_kwargs={"metadata": {"Software": None}})
    log.info("logged %d plots (%d SHAP rows)", len(figures), len(rows))
    return mean_abs_shap(contribs)
