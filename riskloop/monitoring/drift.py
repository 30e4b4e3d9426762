"""Input drift of a registered model: its training reference vs what it has actually been scoring.

The reference is the model version's own run artifact ``reference/features.parquet`` (a sample of
the training features, written by ``training``), so the comparison is always against the data
*that* version learned from, not whatever the warehouse holds today. The current data is the
``features`` JSON of recent ``serving.decision_log`` rows for the same model and version: exactly
the vectors that were scored, including degraded ones (they are what the model saw).

Evidently picks the statistical test per column (K-S / chi-square / Z-test for small samples,
Wasserstein / Jensen-Shannon for large ones); we only turn its per-column verdicts into a
three-level verdict that the promotion gate and alerting can act on, and keep the evidence in
``monitoring.drift_reports``, an HTML report under ``<home>/reports`` (copied to object storage,
``open_store(settings)``, key ``reports/<model>/<report_id>.html``) and an MLflow run in the
``riskloop-monitoring`` experiment.

The *score* is compared with the version's out-of-sample test predictions
(``evaluation/test_predictions.parquet``): scores of the training rows themselves are over-confident
and would raise false score drift. Once labels mature (the transaction is ``label_delay_days`` older
than the newest transaction in the warehouse: decisions may be replayed traffic, so the wall clock
says nothing about maturity), the decisions are joined to ``marts.fct_transactions`` for realised
AUC ROC / average precision and *target drift*: the matured fraud rate against the test window's
label rate, with Evidently's two-proportion Z-test.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.models.artifacts import PREDICTIONS_ARTIFACT, REFERENCE_ARTIFACT
from riskloop.models.products import CREDIT, FRAUD, PRODUCTS, product_of
from riskloop.models.registry import mlflow_client, parse_features_param

log = logging.getLogger(__name__)

MONITORING_SCHEMA = "monitoring"
MONITORING_EXPERIMENT = "riskloop-monitoring"
# Columns a reference sample may carry for the model's output; the first one present is the score.
SCORE_COLUMNS = ("score", "prediction", "y_score")
VERDICTS = ("ok", "warning", "critical", "insufficient_data")

class MonitoringError(RuntimeError):
    """The model version or its reference sample cannot be found: drift cannot even be assessed."""


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's verdict for one column: which test it chose, the statistic and the threshold."""

    column: str
    method: str
    threshold: float | None
    score: float | None
    drifted: bool
    note: str = ""


@dataclass(frozen=True)
class Performance:
    """Realised performance on matured labels next to the version's own test metrics.

    ``ap_drop`` is test AP minus realised AP (positive = worse in production)."""

    n_matured: int
    n_positive: int
    auc_roc: float
    average_precision: float
    test_auc_roc: float | None
    test_average_precision: float | None
    label_delay_days: int
    data_now: str | None  # newest transaction in the warehouse (ISO): the data's "now"
    # Bootstrap 95 % interval of the realised AP (None in reports made before it was computed)
    ap_ci95_low: float | None = None
    ap_ci95_high: float | None = None
    product: str = FRAUD  # whose labels: frauds (fct_transactions) or defaults (fct_credit_outcomes)

    @property
    def ap_drop(self) -> float | None:
        if self.test_average_precision is None:
            return None
        return self.test_average_precision - self.average_precision

    @property
    def ap_drop_low(self) -> float | None:
        """The smallest drop the interval allows (test AP minus the interval's top): the drop the
        matured labels show beyond their sampling noise. The point drop without an interval."""
        if self.test_average_precision is None:
            return None
        if self.ap_ci95_high is None:
            return self.ap_drop
        return self.test_average_precision - self.ap_ci95_high


@dataclass(frozen=True)
class TargetDrift:
    """Matured fraud rate vs the reference (test-window) label rate: Evidently's two-proportion Z-test."""

    method: str
    threshold: float
    p_value: float
    drifted: bool
    reference_rate: float
    current_rate: float
    n_reference: int
    n_current: int


@dataclass(frozen=True)
class DriftResult:
    """One drift check of one model version; ``verdict`` is what callers act on."""

    report_id: str
    model_name: str
    model_version: str
    model_alias: str | None
    verdict: str
    reason: str
    n_reference: int
    n_current: int
    features: tuple[str, ...]
    per_feature: dict[str, ColumnDrift] = field(default_factory=dict)
    score_drift: ColumnDrift | None = None
    share_drifted: float | None = None
    warning_share: float = 0.2  # the share of drifted inputs this check judged "warning" from
    window_start: datetime | None = None
    window_end: datetime | None = None
    report_path: str | None = None
    mlflow_run_id: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    performance: Performance | None = None
    target_drift: TargetDrift | None = None
    report_url: str | None = None  # the HTML report in object storage

    @property
    def drifted_features(self) -> list[str]:
        """Names of the drifted model inputs, in model order."""
        return [f for f in self.features if f in self.per_feature and self.per_feature[f].drifted]

    @property
    def blocks_promotion(self) -> bool:
        return self.verdict == "critical"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, e.g. to hand the result from one Airflow task to the next (XCom)."""
        out = asdict(self)
        for key in ("window_start", "window_end", "created_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DriftResult":
        kwargs = dict(data)
        for key in ("window_start", "window_end", "created_at"):
            if kwargs.get(key):
                kwargs[key] = datetime.fromisoformat(kwargs[key])
        kwargs["features"] = tuple(kwargs.get("features", ()))
        kwargs["per_feature"] = {k: ColumnDrift(**v) for k, v in (kwargs.get("per_feature") or {}).items()}
        if kwargs.get("score_drift"):
            kwargs["score_drift"] = ColumnDrift(**kwargs["score_drift"])
        if kwargs.get("performance"):
            kwargs["performance"] = Performance(**kwargs["performance"])
        if kwargs.get("target_drift"):
            kwargs["target_drift"] = TargetDrift(**kwargs["target_drift"])
        return cls(**kwargs)


# --- small helpers -----------------------------------------------------------------------



def _load_reference(settings: Settings, run_id: str, artifact: str = REFERENCE_ARTIFACT) -> pd.DataFrame:
    import mlflow

    with tempfile.TemporaryDirectory(prefix="riskloop-ref-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=tmp, tracking_uri=settings.tracking_uri)
        except Exception as exc:  # MlflowException or an OSError from the artifact store
            raise MonitoringError(f"run {run_id} has no readable {artifact}: {exc}") from exc
        return pd.read_parquet(path)


def _load_predictions(settings: Settings, run_id: str) -> pd.DataFrame | None:
    """The run's out-of-sample test predictions (``score``, ``label``), or None for a run that has none
    (older or hand-registered versions: score drift then falls back to a score in the reference)."""
    try:
        frame = _load_reference(settings, run_id, PREDICTIONS_ARTIFACT)
    except MonitoringError as exc:
        log.warning("no test predictions for run %s (%s): no out-of-sample score/label reference", run_id, exc)
        return None
    return frame if "score" in frame.columns else None


@dataclass(frozen=True)
class _LabelSource:
    """Where a product's matured labels live. ``matured``: one row per decided entity whose label is
    known (score, label, the data's "now"); ``now``: the data's "now"; ``reference``: the labels of the
    version's test window (count, positives)."""

    table: str
    matured: str
    now: str
    reference: str


_LABELS = {
    # A fraud label matures RISKLOOP_LABEL_DELAY_DAYS after the payment (chargebacks come late).
    FRAUD: _LabelSource("marts.fct_transactions", """
with data_now as (select max(tx_at) as at from marts.fct_transactions)
select distinct on (f.payment_id) d.score, f.is_fraud, data_now.at
from serving.decision_log d
join marts.fct_transactions f on f.payment_id = d.request->>'transaction_id'
cross join data_now
where d.model_name = %(name)s and d.model_version = %(version)s and d.score is not null
  and f.tx_at <= data_now.at - make_interval(days => %(delay)s) {until}
order by f.payment_id, d.decided_at desc
""", "select max(tx_at) from marts.fct_transactions",
        "select count(*), coalesce(sum(is_fraud), 0) from marts.fct_transactions where tx_at >= %s and tx_at < %s"),
    # A credit outcome is observed whole (default or not), once: matured when it is in the outcomes mart.
    CREDIT: _LabelSource("marts.fct_credit_outcomes", """
with data_now as (select max(observed_at) as at from marts.fct_credit_outcomes)
select distinct on (o.application_id) d.score, o.defaulted, data_now.at
from serving.decision_log d
join marts.fct_credit_outcomes o on o.application_id = d.request->>'application_id'
cross join data_now
where d.model_name = %(name)s and d.model_version = %(version)s and d.score is not null {until}
order by o.application_id, d.decided_at desc
""", "select max(observed_at) from marts.fct_credit_outcomes",
        "select count(*), coalesce(sum(defaulted), 0) from marts.fct_credit_outcomes "
        "where applied_at >= %s and applied_at < %s"),
}


def _load_matured(settings: Settings, model_name: str, model_version: str,
                  until: datetime | None, product: str = FRAUD) -> tuple[pd.DataFrame, datetime | None]:
    """Scores of this version's decisions whose label has matured, with the label (``is_fraud``: 1 for
    the product's positive, a fraud or a default).

    Maturity is judged against the newest row of the product's label mart, never the wall clock.
    One row per transaction or application (a retried or replayed request counts once: its latest decision)."""
    source = _LABELS[product]
    empty = pd.DataFrame(columns=["score", "is_fraud"])
    with db.connect(settings) as conn:
        present = conn.execute("select to_regclass('serving.decision_log') is not null "
                               "and to_regclass(%s) is not null", (source.table,)).fetchone()[0]
        if not present:
            log.info("no decision log or %s yet: no matured labels", source.table)
            return empty, None
        rows = conn.execute(source.matured.format(until="and d.decided_at < %(until)s" if until else ""),
                            {"name": model_name, "version": str(model_version),
                             "delay": int(settings.label_delay_days), "until": until}).fetchall()
        data_now = rows[0][2] if rows else conn.execute(source.now).fetchone()[0]
    return pd.DataFrame([r[:2] for r in rows], columns=["score", "is_fraud"]), data_now


def _reference_labels(settings: Settings, run_params: dict[str, str],
                      predictions: pd.DataFrame | None, product: str = FRAUD) -> pd.Series | None:
    """The reference of target drift: final fraud labels (``is_fraud``) of every payment in the
    version's test window, as the matured decisions are labelled, from ``marts.fct_transactions``.

    Not the test set's own ``label`` column: that set drops the payments of cards already known to be
    compromised and labels as known at the cut-off, while production traffic carries every payment and
    matures to the final label, so comparing the two flags a drift of the definitions (the fraud rate
    of an undrifted week came out twice the test set's). Falls back to the test predictions' labels
    for a run without a recorded test window. A credit model's: the outcomes of the applications of its
    test window (``marts.fct_credit_outcomes``)."""
    source = _LABELS[product]
    start, end = run_params.get("test_start"), run_params.get("test_end")
    if start and end:
        with db.connect(settings) as conn:
            if conn.execute("select to_regclass(%s) is not null", (source.table,)).fetchone()[0]:
                n, k = conn.execute(source.reference, (start, end)).fetchone()
                if n:
                    return pd.Series(np.repeat([1, 0], [k, n - k]))
    if predictions is not None and "label" in predictions.columns and len(predictions):
        return predictions["label"].astype(int)
    return None


def _realised(settings: Settings, matured: pd.DataFrame, data_now: datetime | None, run_metrics: dict[str, float],
              ref_labels: pd.Series | None, min_matured: int,
              alpha: float, product: str = FRAUD) -> tuple[Performance | None, TargetDrift | None, str | None]:
    """Realised AUC / AP and target drift, or why they were not computed (too few rows, one class)."""
    from riskloop.models import metrics

    n, n_pos = len(matured), int(matured["is_fraud"].sum()) if len(matured) else 0
    if n < min_matured:
        return None, None, f"{n} matured labels (< {min_matured}): realised performance not assessed"
    if n_pos in (0, n):
        return None, None, f"{n} matured labels, all of one class: realised performance not assessed"
    y, score = matured["is_fraud"].astype(int).to_numpy(), matured["score"].astype(float).to_numpy()
    ap_low, ap_high = (None if math.isnan(v) else v for v in metrics.average_precision_interval(y, score))
    perf = Performance(n_matured=n, n_positive=n_pos, auc_roc=metrics.auc_roc(y, score),
                       average_precision=metrics.average_precision(y, score),
                       ap_ci95_low=ap_low, ap_ci95_high=ap_high,
                       test_auc_roc=run_metrics.get("auc_roc"),
                       test_average_precision=run_metrics.get("average_precision"),
                       label_delay_days=settings.label_delay_days,
                       data_now=data_now.isoformat() if data_now else None, product=product)
    target = None
    if ref_labels is not None and len(ref_labels):
        from evidently.legacy.calculations.stattests import z_stat_test
        from evidently.legacy.core import ColumnType

        p_value, drifted = z_stat_test.func(ref_labels, pd.Series(y), ColumnType.Categorical, alpha)
        target = TargetDrift(method=z_stat_test.name, threshold=alpha, p_value=float(p_value),
                             drifted=bool(drifted), reference_rate=float(ref_labels.mean()),
                             current_rate=float(y.mean()), n_reference=len(ref_labels), n_current=n)
    return perf, target, None


def _load_current(settings: Settings, model_name: str, model_version: str, since: datetime | None,
                  last_n: int | None, include_degraded: bool, until: datetime | None = None) -> pd.DataFrame:
    """Recent decision-log rows of this model version: decided_at, score and the features JSON."""
    clauses = ["model_name = %(name)s", "model_version = %(version)s"]
    params: dict[str, Any] = {"name": model_name, "version": str(model_version)}
    if since is not None:
        clauses.append("decided_at >= %(since)s")
        params["since"] = since
    if until is not None:
        clauses.append("decided_at < %(until)s")
        params["until"] = until
    if not include_degraded:
        clauses.append("not coalesce(degraded, false)")
    sql = (f"select decided_at, score, features from serving.decision_log where {' and '.join(clauses)} "
           "order by decided_at desc")
    if last_n is not None:
        sql += " limit %(last_n)s"
        params["last_n"] = int(last_n)
    with db.connect(settings) as conn:
        exists = conn.execute("select to_regclass('serving.decision_log') is not null").fetchone()[0]
        if not exists:
            log.warning("serving.decision_log does not exist yet: nothing has been scored")
            return pd.DataFrame(columns=["decided_at", "score", "features"])
        rows = conn.execute(sql, params).fetchall()
    return pd.DataFrame(rows, columns=["decided_at", "score", "features"])


def _expand_features(current: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """One numeric column per model input from the ``features`` JSON (psycopg decodes jsonb to dicts)."""
    records = [f if isinstance(f, dict) else json.loads(f or "{}") for f in current["features"]]
    wide = pd.DataFrame.from_records(records, index=current.index) if records else pd.DataFrame(index=current.index)
    out = pd.DataFrame(index=current.index)
    for name in features:
        out[name] = pd.to_numeric(wide[name], errors="coerce") if name in wide else float("nan")
    return out


def _drift_from_snapshot(snapshot) -> dict[str, ColumnDrift]:
    """Per-column results of an Evidently 0.7 snapshot.

    The per-column *tests* carry Evidently's own drift decision (FAIL = drifted), so we need not
    know whether the chosen statistic is a p-value (drift below threshold) or a distance (drift
    above); the ``ValueDrift`` metrics carry the statistic itself.
    """
    data = snapshot.dict()
    scores: dict[str, float] = {}
    configs: dict[str, dict[str, Any]] = {}
    for metric in data["metrics"]:
        cfg = metric.get("config", {})
        if cfg.get("type", "").endswith(":ValueDrift"):
            scores[cfg["column"]] = float(metric["value"])
            configs[cfg["column"]] = cfg
    drifted: dict[str, bool] = {}
    for test in data.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift"):
            drifted[params["column"]] = test["status"] == "FAIL"
    out: dict[str, ColumnDrift] = {}
    for col, cfg in configs.items():
        method, threshold, score = str(cfg.get("method")), cfg.get("threshold"), scores[col]
        if col in drifted:
            is_drift = drifted[col]
        else:  # no test emitted (should not happen with include_tests=True): apply the method's sense
            is_drift = score < threshold if "p_value" in method else score >= threshold
        out[col] = ColumnDrift(column=col, method=method, threshold=threshold, score=score, drifted=bool(is_drift))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


# --- the check -----------------------------------------------------------------------------

def run_drift(
    settings: Settings,
    model_name: str = "riskloop-fraud",
    alias: str | None = "champion",
    since: datetime | None = None,
    min_rows: int = 200,
    *,
    until: datetime | None = None,
    version: str | int | None = None,
    last_n: int | None = 5000,
    warning_share: float = 0.2,
    critical_share: float = 0.5,
    include_degraded: bool = True,
    log_to_mlflow: bool = True,
    min_matured: int | None = None,
    target_alpha: float | None = None,
) -> DriftResult:
    """Compare the model version's training reference with its recent serving inputs.

    ``version`` pins a version (else ``alias`` resolves it). Current rows: those decided at or
    after ``since`` and before ``until`` (a scheduled run's data interval, so a backfilled day
    checks that day's decisions, not whatever is latest when it runs), newest first, at most
    ``last_n`` (``None`` = no limit). Verdict: fewer than
    ``min_rows`` current rows → ``insufficient_data`` (too little evidence either way, which is
    *not* an alarm); share of drifted inputs ≥ ``critical_share``, or ≥ ``warning_share`` together
    with a drifted score (the shift reaches the decisions: e.g. every amount x3 moves 6 of the fraud
    model's 24 inputs and its score) → ``critical``; ≥ ``warning_share`` or a drifted score alone →
    ``warning``; else ``ok``. Every check is recorded in
    ``monitoring.drift_reports``, whatever the verdict.

    The score is compared with the version's test predictions when the run logged them (else with a
    score column of the reference sample, if any). Realised performance and target drift use this
    version's decisions before ``until`` whose labels matured (any age: the recent window is mostly
    unlabelled), once at least ``min_matured`` (default ``settings.monitor_min_matured``) of both
    classes exist; target drift's significance is ``target_alpha`` (default
    ``settings.monitor_target_alpha``). Target drift makes the verdict at least ``warning``; a drop
    in realised AP is judged by the alerting (``performance_drop``), not by the verdict.
    """
    if not 0.0 < warning_share <= critical_share <= 1.0:
        raise ValueError("need 0 < warning_share <= critical_share <= 1")
    started = datetime.now(UTC)
    client = mlflow_client(settings.tracking_uri)
    mv = client.get_model_version(model_name, str(version)) if version is not None \
        else client.get_model_version_by_alias(model_name, alias)
    if not mv.run_id:
        raise MonitoringError(f"{model_name} v{mv.version} has no source run, hence no reference sample")
    run = client.get_run(mv.run_id)
    product = product_of(settings, model_name, mv.tags.get("feature_service")).name
    reference = _load_reference(settings, mv.run_id)
    features = parse_features_param(run.data.params.get("features"))
    if not features:
        log.warning("%s v%s: run param 'features' missing; using the reference's columns", model_name, mv.version)
        features = [c for c in reference.columns if c not in SCORE_COLUMNS and c != "is_fraud"]
    missing_in_ref = [f for f in features if f not in reference.columns]
    if missing_in_ref:
        raise MonitoringError(f"{model_name} v{mv.version}: reference sample lacks model inputs {missing_in_ref}")
    score_col = next((c for c in SCORE_COLUMNS if c in reference.columns), None)
    predictions = _load_predictions(settings, mv.run_id)
    min_matured = settings.monitor_min_matured if min_matured is None else min_matured
    target_alpha = settings.monitor_target_alpha if target_alpha is None else target_alpha

    current_raw = _load_current(settings, model_name, str(mv.version), since, last_n, include_degraded, until)
    thresholds = {"min_rows": min_rows, "warning_share": warning_share, "critical_share": critical_share,
                  "last_n": last_n, "since": since.isoformat() if since else None,
                  "until": until.isoformat() if until else None,
                  "include_degraded": include_degraded, "min_matured": min_matured,
                  "target_alpha": target_alpha, "label_delay_days": settings.label_delay_days}
    base = dict(
        report_id=str(uuid.uuid4()), model_name=model_name, model_version=str(mv.version),
        model_alias=alias if version is None else None, n_reference=len(reference),
        n_current=len(current_raw), features=tuple(features), warning_share=warning_share,
        window_start=current_raw["decided_at"].min() if len(current_raw) else None,
        window_end=current_raw["decided_at"].max() if len(current_raw) else None,
    )

    # Matured labels do not depend on the recent window: assessed even when it is too thin.
    matured, data_now = _load_matured(settings, model_name, str(mv.version), until, product)
    performance, target_drift, not_assessed = _realised(
        settings, matured, data_now, run.data.metrics,
        _reference_labels(settings, run.data.params, predictions, product), min_matured, target_alpha, product)
    base.update(performance=performance, target_drift=target_drift)

    if len(current_raw) < min_rows:
        result = DriftResult(**base, verdict="insufficient_data",
                             reason=f"only {len(current_raw)} scored rows in the window (< min_rows={min_rows}); "
                                    "drift not assessed" + (f"; {performance_text(performance, target_drift)}"
                                                            if performance else ""))
        _record(settings, result, thresholds)
        log.info("drift %s v%s: %s", model_name, mv.version, result.reason)
        return result

    current = _expand_features(current_raw, features)
    ref = reference[features].apply(pd.to_numeric, errors="coerce").reset_index(drop=True)
    absent = [f for f in features if current[f].isna().all()]
    compared = [f for f in features if f not in absent]
    score_source = None
    if predictions is not None:
        # The two samples differ in length: the shorter is padded with NaN, which Evidently drops
        # per column, so each column is tested on its own rows only.
        ref_score, score_source = predictions["score"], f"test predictions ({len(predictions)} rows)"
    elif score_col is not None:
        ref_score, score_source = reference[score_col], f"reference column {score_col!r}"
    if score_source is not None:
        ref = pd.concat([ref, pd.to_numeric(ref_score, errors="coerce").reset_index(drop=True)
                         .rename("__score__")], axis=1)
        current["__score__"] = pd.to_numeric(current_raw["score"], errors="coerce")
        if current["__score__"].notna().any():
            compared.append("__score__")

    per_col = _evidently_drift(ref[compared], current[compared], compared) if compared else ({}, None)
    col_results, snapshot = per_col
    per_feature: dict[str, ColumnDrift] = {
        f: col_results[f] for f in features if f in col_results}
    for f in absent:  # an input serving never sends is broken plumbing, worse than drift
        per_feature[f] = ColumnDrift(column=f, method="absent_in_current", threshold=None, score=None,
                                     drifted=True, note="null or missing in every scored row")
    score_drift = col_results.get("__score__")
    if score_drift is not None:
        score_drift = ColumnDrift(**{**asdict(score_drift), "column": "score",
                                     "note": f"reference: {score_source}"})


    drifted = [f for f in features if per_feature[f].drifted]
    share = len(drifted) / len(features)
    score_moved = score_drift is not None and score_drift.drifted
    if share >= critical_share or (score_moved and share >= warning_share):
        # Many inputs moved, or enough of them to move the model's own output: the decisions are
        # changing, and the test window no longer describes production.
        verdict = "critical"
    elif share >= warning_share or score_moved or (target_drift is not None and target_drift.drifted):
        verdict = "warning"
    else:
        verdict = "ok"
    pieces = [f"{len(drifted)}/{len(features)} inputs drifted (share {share:.2f}; "
              f"warning >= {warning_share:.2f}, critical >= {critical_share:.2f})"]
    if drifted:
        pieces.append("drifted: " + ", ".join(
            f"{f} ({per_feature[f].method}={_fmt(per_feature[f].score)})" for f in drifted))
    if score_drift is not None:
        pieces.append(f"score {'drifted' if score_drift.drifted else 'stable'} "
                      f"({score_drift.method}={_fmt(score_drift.score)})")
    pieces.append(performance_text(performance, target_drift) if performance else str(not_assessed))
    result = DriftResult(**base, verdict=verdict, reason="; ".join(pieces), per_feature=per_feature,
                         score_drift=score_drift, share_drifted=share)

    report_path = _save_html(settings, snapshot, result) if snapshot is not None else None
    stored_url = _store_html(settings, result, report_path) if report_path else None
    run_id = _log_mlflow(settings, client, result, report_path, mv.run_id, thresholds) if log_to_mlflow else None
    result = DriftResult(**{**_shallow(result), "report_path": report_path, "mlflow_run_id": run_id,
                            "report_url": stored_url})
    _record(settings, result, thresholds)
    log.info("drift %s v%s: %s: %s (%.1fs, report %s, MLflow run %s)", model_name, mv.version, verdict,
             result.reason, (datetime.now(UTC) - started).total_seconds(), report_path, run_id)
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def performance_text(performance: Performance, target: TargetDrift | None) -> str:
    """Realised performance (and target drift) in one line, for the reason and the alert."""
    ci = ("" if performance.ap_ci95_low is None else
          f", 95 % interval {_fmt(performance.ap_ci95_low)}-{_fmt(performance.ap_ci95_high)}")
    positives = PRODUCTS[performance.product].positives
    text = (f"realised on {performance.n_matured} matured labels ({performance.n_positive} {positives}): AUC "
            f"{_fmt(performance.auc_roc)} (test {_fmt(performance.test_auc_roc)}), AP "
            f"{_fmt(performance.average_precision)} (test {_fmt(performance.test_average_precision)}{ci})")
    if target is not None:
        rate = "default rate" if performance.product == CREDIT else "fraud rate"
        text += (f"; {rate} {'drifted' if target.drifted else 'stable'}: {target.current_rate:.2%} matured "
                 f"vs {target.reference_rate:.2%} in the test window (Z-test p={_fmt(target.p_value)})")
    return text


def _shallow(result: DriftResult) -> dict[str, Any]:
    """Field → value without recursing into nested dataclasses (``asdict`` would flatten them)."""
    return {k: getattr(result, k) for k in result.__dataclass_fields__}


def _evidently_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]):
    """Run Evidently's DataDriftPreset over ``columns`` (all numeric); per-column results + snapshot.

    Imported here: Evidently takes ~10 s to import, which the API, the CLI and Airflow's DAG
    parser must not pay unless a drift check actually runs.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=columns)
    report = Report([DataDriftPreset(columns=columns)], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(current.reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference.reset_index(drop=True), data_definition=definition),
    )
    return _drift_from_snapshot(snapshot), snapshot


def _save_html(settings: Settings, snapshot, result: DriftResult) -> str:
    reports = settings.home / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    stamp = result.created_at.strftime("%Y%m%dT%H%M%SZ")
    path = reports / f"drift_{_slug(result.model_name)}_v{result.model_version}_{stamp}_{result.report_id[:8]}.html"
    snapshot.save_html(str(path))
    return str(path)


def report_key(result: DriftResult) -> str:
    """Object-storage key of a check's HTML report."""
    return f"reports/{_slug(result.model_name)}/{result.report_id}.html"


def _store_html(settings: Settings, result: DriftResult, report_path: str) -> str | None:
    """Copy the HTML report to object storage; its URL, or None if the store failed (logged: the
    figures are already computed and still land in Postgres and MLflow)."""
    from pathlib import Path

    from riskloop.core.objectstore import open_store

    key = report_key(result)
    try:
        store = open_store(settings)
        store.put(key, Path(report_path).read_bytes())
    except Exception:
        log.exception("storing drift report %s in object storage failed", result.report_id)
        return None
    return f"{store.url.rstrip('/')}/{key}"


def _log_mlflow(settings: Settings, client, result: DriftResult, report_path: str | None,
                source_run_id: str, thresholds: dict[str, Any]) -> str | None:
    """One run per check in ``riskloop-monitoring``; the training run itself stays untouched.

    Monitoring must not fail because MLflow hiccups after the statistics are computed: a logging
    failure is logged and the check still lands in Postgres.
    """
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException

    try:
        exp = client.get_experiment_by_name(MONITORING_EXPERIMENT)
        if exp is None:
            try:
                exp_id = client.create_experiment(MONITORING_EXPERIMENT)
            except MlflowException:  # created concurrently
                exp_id = client.get_experiment_by_name(MONITORING_EXPERIMENT).experiment_id
        else:
            exp_id = exp.experiment_id
        run = client.create_run(exp_id, run_name=f"drift-{result.model_name}-v{result.model_version}", tags={
            "riskloop.kind": "drift", "model_name": result.model_name, "model_version": result.model_version,
            "model_alias": result.model_alias or "", "source_run_id": source_run_id,
            "verdict": result.verdict, "drift_report_id": result.report_id})
        run_id = run.info.run_id
        try:
            for k, v in thresholds.items():
                client.log_param(run_id, k, "" if v is None else str(v))
            client.log_metric(run_id, "n_reference", result.n_reference)
            client.log_metric(run_id, "n_current", result.n_current)
            client.log_metric(run_id, "share_drifted", result.share_drifted or 0.0)
            client.log_metric(run_id, "n_drifted", len(result.drifted_features))
            for f, d in result.per_feature.items():
                if d.score is not None:
                    client.log_metric(run_id, f"drift_score.{_slug(f)}", d.score)
            if result.score_drift is not None and result.score_drift.score is not None:
                client.log_metric(run_id, "drift_score.score", result.score_drift.score)
            if result.performance is not None:
                p = result.performance
                client.log_metric(run_id, "n_matured", p.n_matured)
                client.log_metric(run_id, "realised_auc_roc", p.auc_roc)
                client.log_metric(run_id, "realised_average_precision", p.average_precision)
                if p.ap_ci95_low is not None:
                    client.log_metric(run_id, "realised_average_precision_ci95_low", p.ap_ci95_low)
                    client.log_metric(run_id, "realised_average_precision_ci95_high", p.ap_ci95_high)
                if p.ap_drop is not None:
                    client.log_metric(run_id, "average_precision_drop", p.ap_drop)
            if result.target_drift is not None:
                t = result.target_drift
                client.log_metric(run_id, "target_rate_current", t.current_rate)
                client.log_metric(run_id, "target_rate_reference", t.reference_rate)
                client.log_metric(run_id, "target_drift_p_value", t.p_value)
            client.log_dict(run_id, _figures(result), "drift/figures.json")
            if report_path:
                client.log_artifact(run_id, report_path, artifact_path="drift")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except Exception:
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        try:  # a breadcrumb on the version itself, for whoever looks at the registry
            client.set_model_version_tag(result.model_name, result.model_version, "drift.last_verdict",
                                         result.verdict)
            client.set_model_version_tag(result.model_name, result.model_version, "drift.last_report_id",
                                         result.report_id)
        except MlflowException:
            log.warning("could not tag %s v%s with the drift verdict", result.model_name, result.model_version)
        return run_id
    except Exception:
        log.exception("logging drift report %s to MLflow failed; it is still recorded in Postgres",
                      result.report_id)
        return None


def _figures(result: DriftResult) -> dict[str, Any]:
    return {
        "verdict": result.verdict, "reason": result.reason, "share_drifted": result.share_drifted,
        "drifted_features": result.drifted_features,
        "per_feature": {k: asdict(v) for k, v in result.per_feature.items()},
        "score_drift": asdict(result.score_drift) if result.score_drift else None,
        "performance": asdict(result.performance) if result.performance else None,
        "target_drift": asdict(result.target_drift) if result.target_drift else None,
    }


def _record(settings: Settings, result: DriftResult, thresholds: dict[str, Any]) -> None:
    from psycopg.types.json import Jsonb

    with db.connect(settings) as conn:
        conn.execute(
            f"""insert into {MONITORING_SCHEMA}.drift_reports
                (report_id, mlflow_run_id, model_name, model_version, model_alias, window_start, window_end,
                 n_reference, n_current, n_features, n_drifted, share_drifted, drifted_features, score_drift,
                 verdict, reason, per_feature, thresholds, report_path, created_at, performance, target_drift,
                 report_url)
                values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                        %s, %s, %s)""",
            (result.report_id, result.mlflow_run_id, result.model_name, result.model_version, result.model_alias,
             result.window_start, result.window_end, result.n_reference, result.n_current, len(result.features),
             len(result.drifted_features) if result.share_drifted is not None else None, result.share_drifted,
             Jsonb(result.drifted_features),
             Jsonb(asdict(result.score_drift)) if result.score_drift else None,
             result.verdict, result.reason, Jsonb({k: asdict(v) for k, v in result.per_feature.items()}),
             Jsonb(thresholds), result.report_path, result.created_at,
             Jsonb(asdict(result.performance)) if result.performance else None,
             Jsonb(asdict(result.target_drift)) if result.target_drift else None, result.report_url),
        )


_REPORT_COLUMNS = ("report_id", "model_name", "model_version", "model_alias", "verdict", "reason", "n_reference",
                   "n_current", "per_feature", "score_drift", "share_drifted", "window_start", "window_end",
                   "report_path", "mlflow_run_id", "created_at", "performance", "target_drift", "report_url",
                   "thresholds")


class UnknownDriftCheck(LookupError):
    """A report id names no recorded drift check of the model (a typo, another model's check)."""


def recorded_drift(settings: Settings, model_name: str, report_id: str | None = None) -> DriftResult | None:
    """The recorded check a promotion gates on: the one ``report_id`` names, which must be a check of
    ``model_name`` (else :class:`UnknownDriftCheck`), or without an id the model's latest (``None``
    if it was never checked). Shared by ``riskloop promote --report-id``, the promote DAG and the
    service's promote API, so all three accept and refuse the same evidence."""
    if report_id is None:
        return load_drift(settings, model_name=model_name)
    try:
        drift = load_drift(settings, report_id=str(uuid.UUID(str(report_id))))
    except ValueError:
        drift = None
    if drift is None or drift.model_name != model_name:
        raise UnknownDriftCheck(f"drift check {report_id} is not recorded for {model_name}: nothing to gate on")
    return drift


def load_drift(settings: Settings, *, report_id: str | None = None, model_name: str | None = None) -> DriftResult | None:
    """A recorded drift check, read back from ``monitoring.drift_reports``: the one with
    ``report_id``, else the latest for ``model_name``; ``None`` if there is none.

    The promote DAG acts on the drift check that triggered it (the asset event names the report),
    so the gate judges exactly the evidence the monitor recorded, not a fresh re-run of it."""
    if (report_id is None) == (model_name is None):
        raise ValueError("give exactly one of report_id and model_name")
    where, arg = ("report_id = %s", report_id) if report_id is not None else ("model_name = %s", model_name)
    with db.connect(settings) as conn:
        row = conn.execute(
            f"select {', '.join(_REPORT_COLUMNS)} from {MONITORING_SCHEMA}.drift_reports "
            f"where {where} order by created_at desc limit 1", (arg,)).fetchone()
    if row is None:
        return None
    data = dict(zip(_REPORT_COLUMNS, row))
    per_feature = {k: ColumnDrift(**v) for k, v in (data.pop("per_feature") or {}).items()}
    score, perf, target = data.pop("score_drift"), data.pop("performance"), data.pop("target_drift")
    judged_by = data.pop("thresholds") or {}
    if "warning_share" in judged_by:
        data["warning_share"] = judged_by["warning_share"]
    return DriftResult(**{**data, "report_id": str(data["report_id"])}, features=tuple(per_feature),
                       per_feature=per_feature, score_drift=ColumnDrift(**score) if score else None,
                       performance=Performance(**perf) if perf else None,
                       target_drift=TargetDrift(**target) if target else None)
