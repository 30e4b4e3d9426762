"""Drift checks against a real MLflow registry and a real ``serving.decision_log``.

A small XGBoost model is registered three times (same reference sample) so each scenario owns a
version and its own decision-log rows: no drift, a clear shift (amounts x 5), too few rows.
Realised performance runs in a database of its own, with planted ``marts.fct_transactions`` rows
whose labels are known.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from riskloop.core.config import Settings

FEATURES = ["amount", "is_weekend", "is_night", "customer_nb_tx_1d", "customer_avg_amount_7d", "terminal_risk_7d"]
AMOUNT_FEATURES = ["amount", "customer_avg_amount_7d"]


def synth(n: int, seed: int) -> pd.DataFrame:
    """Fraud-like inputs with a label that depends on amount and terminal risk."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "amount": rng.lognormal(3.5, 0.8, n),
        "is_weekend": rng.binomial(1, 2 / 7, n),
        "is_night": rng.binomial(1, 0.25, n),
        "customer_nb_tx_1d": rng.poisson(3, n).astype(float),
        "customer_avg_amount_7d": rng.lognormal(3.5, 0.5, n),
        "terminal_risk_7d": rng.beta(1, 30, n),
    })
    logit = -4 + 0.01 * df["amount"] + 40 * df["terminal_risk_7d"] + 0.8 * df["is_night"]
    df["is_fraud"] = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    return df


@contextmanager
def tracking(settings: Settings) -> Iterator[None]:
    """Point the fluent MLflow API at the test server for the duration (restored afterwards)."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def register(settings: Settings, name: str, train: pd.DataFrame, reference: pd.DataFrame,
             params: dict | None = None, aliases: tuple[str, ...] = ("challenger",),
             test: pd.DataFrame | None = None) -> str:
    """Train and register a small model the way ``training`` does; returns the version.

    With ``test``, the run also logs what training logs for its test window: the predictions
    (``score``, ``label``) and the AUC / AP metrics, and the reference sample carries no score (as
    training's does not)."""
    import mlflow
    import mlflow.xgboost
    import xgboost as xgb
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from riskloop.models import metrics
    from riskloop.monitoring.drift import PREDICTIONS_ARTIFACT

    xgb_params = {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.3, "n_jobs": 1, **(params or {})}
    clf = xgb.XGBClassifier(**xgb_params).fit(train[FEATURES], train["is_fraud"])
    ref = reference[FEATURES].copy()
    if test is None:
        ref["score"] = clf.predict_proba(ref)[:, 1]
    else:
        predictions = pd.DataFrame({"label": test["is_fraud"].to_numpy(),
                                    "score": clf.predict_proba(test[FEATURES])[:, 1]})
    with tracking(settings), tempfile.TemporaryDirectory() as tmp:
        mlflow.set_experiment("riskloop-tests")
        with mlflow.start_run():
            mlflow.log_params({"features": json.dumps(FEATURES), "test_start": "2024-03-01",
                               "test_end": "2024-03-15"})
            ref.to_parquet(Path(tmp) / "features.parquet")
            mlflow.log_artifact(str(Path(tmp) / "features.parquet"), artifact_path="reference")
            if test is not None:
                predictions.to_parquet(Path(tmp) / Path(PREDICTIONS_ARTIFACT).name)
                mlflow.log_artifact(str(Path(tmp) / Path(PREDICTIONS_ARTIFACT).name),
                                    artifact_path=str(Path(PREDICTIONS_ARTIFACT).parent))
                mlflow.log_metrics({
                    "auc_roc": metrics.auc_roc(predictions["label"], predictions["score"]),
                    "average_precision": metrics.average_precision(predictions["label"], predictions["score"])})
            # explicit requirements and signature: skips MLflow's slow environment inference
            info = mlflow.xgboost.log_model(
                clf, name="model", registered_model_name=name, pip_requirements=["xgboost"],
                signature=infer_signature(train[FEATURES].astype(float), clf.predict_proba(ref[FEATURES])[:, 1]))
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    version = str(info.registered_model_version)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    return version


def log_decisions(settings: Settings, name: str, version: str, frame: pd.DataFrame,
                  scores: np.ndarray | None = None, end: datetime | None = None,
                  transaction_ids: list[str] | None = None) -> None:
    """Append rows to serving.decision_log as the scoring service would."""
    from serving.decision_log import INSERT, _params

    end = end or datetime.now(UTC)
    rows = []
    for i, (_, r) in enumerate(frame[FEATURES].iterrows()):
        row = {
            "decision_id": uuid.uuid4(), "request_id": f"req-{uuid.uuid4().hex[:8]}",
            "decided_at": end - timedelta(seconds=len(frame) - i), "model_name": name,
            "model_version": version, "model_alias": "champion",
            "score": None if scores is None else float(scores[i]), "decision": "allow",
            "reasons": [], "rules": [], "features": {k: float(v) for k, v in r.items()},
            "feature_timestamps": {}, "request": {"amount": float(r["amount"]),
                                                      **({"transaction_id": transaction_ids[i]}
                                                         if transaction_ids else {})},
            "latency_ms": 3.0,
            "degraded": False, "product": "fraud", "policy_version": "test", "signals": {},
        }
        rows.append(_params(row))  # the service's own row -> parameters (optional columns may be absent)
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        with conn.cursor() as cur:
            cur.executemany(INSERT, rows)


def model_scores(settings: Settings, name: str, version: str, frame: pd.DataFrame) -> np.ndarray:
    import mlflow
    import mlflow.xgboost

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                tracking_uri=settings.tracking_uri)
    return mlflow.xgboost.load_model(local).predict_proba(frame[FEATURES])[:, 1]


@pytest.fixture(scope="module")
def drift_model(stack_env: dict[str, str]) -> dict[str, str]:
    """One registered model, three versions sharing a 1 000-row reference; rows logged per version."""
    settings = Settings()
    name = f"riskloop-fraud-drift-{uuid.uuid4().hex[:6]}"
    train, reference = synth(3000, seed=1), synth(1000, seed=2)
    # v_ok logs test predictions like training does: its score reference is out-of-sample.
    v_ok = register(settings, name, train, reference, aliases=("champion", "challenger"), test=synth(1000, seed=6))
    v_shift = register(settings, name, train, reference)
    v_few = register(settings, name, train, reference)

    same = synth(400, seed=3)
    log_decisions(settings, name, v_ok, same, model_scores(settings, name, v_ok, same))
    shifted = synth(400, seed=4)
    shifted[AMOUNT_FEATURES] *= 5
    log_decisions(settings, name, v_shift, shifted, model_scores(settings, name, v_shift, shifted))
    log_decisions(settings, name, v_few, synth(20, seed=5))
    return {"name": name, "ok": v_ok, "shift": v_shift, "few": v_few}


def _stored(settings: Settings, report_id: str) -> dict:
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        cur = conn.execute("select * from monitoring.drift_reports where report_id = %s", (report_id,))
        cols = [d.name for d in cur.description]
        row = cur.fetchone()
    assert row is not None, "drift check not recorded in monitoring.drift_reports"
    return dict(zip(cols, row, strict=True))


def test_no_drift_on_a_sample_of_the_reference_distribution(settings: Settings, drift_model) -> None:
    from riskloop.monitoring.drift import run_drift

    result = run_drift(settings, drift_model["name"], alias="champion", min_rows=100)

    assert result.model_version == drift_model["ok"]
    assert result.verdict == "ok", result.reason
    assert result.n_current == 400 and result.n_reference == 1000
    assert set(result.per_feature) == set(FEATURES)
    assert all(d.method and d.threshold is not None for d in result.per_feature.values())
    # Its score reference is the run's test predictions (the reference sample holds no score at all).
    assert result.score_drift is not None and not result.score_drift.drifted
    assert result.score_drift.note == "reference: test predictions (1000 rows)"
    assert result.report_path and Path(result.report_path).is_file()
    assert Path(result.report_path).parent == settings.home / "reports"
    # ...and the same HTML is in object storage (the local default: <home>/batch) under a stable key.
    from riskloop.core.objectstore import open_store
    from riskloop.monitoring.drift import report_key

    assert report_key(result) == f"reports/{drift_model['name']}/{result.report_id}.html"
    assert open_store(settings).get(report_key(result)) == Path(result.report_path).read_bytes()
    assert result.report_url == f"{open_store(settings).url}/{report_key(result)}"
    row = _stored(settings, result.report_id)
    assert row["verdict"] == "ok" and row["n_current"] == 400 and row["model_version"] == drift_model["ok"]
    assert set(row["per_feature"]) == set(FEATURES)
    assert row["score_drift"]["note"].startswith("reference: test predictions")
    assert row["report_url"] == result.report_url
    # no marts here: nothing matured, said so rather than guessed
    assert row["performance"] is None and result.performance is None and "0 matured labels" in result.reason

    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    assert result.mlflow_run_id
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["verdict"] == "ok"
    assert run.data.metrics["share_drifted"] == result.share_drifted
    arts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "drift")}
    assert f"drift/{Path(result.report_path).name}" in arts


def test_amounts_times_five_is_detected_and_named(settings: Settings, drift_model) -> None:
    from riskloop.monitoring.drift import run_drift

    result = run_drift(settings, drift_model["name"], version=drift_model["shift"], min_rows=100)

    assert set(AMOUNT_FEATURES) <= set(result.drifted_features), result.reason
    # 2 of 6 inputs (>= warning_share 0.2) and the score moved: the decisions change, which blocks promotion
    assert result.verdict == "critical" and result.blocks_promotion, result.reason
    assert "amount" in result.reason
    assert result.score_drift is not None and result.score_drift.drifted
    row = _stored(settings, result.report_id)
    assert set(AMOUNT_FEATURES) <= set(row["drifted_features"])
    assert row["share_drifted"] == pytest.approx(result.share_drifted)

    # The same evidence under a laxer policy is only a warning: the thresholds are the operator's.
    lax = run_drift(settings, drift_model["name"], version=drift_model["shift"], min_rows=100,
                    warning_share=0.5, critical_share=0.9, log_to_mlflow=False)
    assert lax.verdict == "warning" and not lax.blocks_promotion, lax.reason


def test_too_few_rows_is_insufficient_data_not_critical(settings: Settings, drift_model) -> None:
    from riskloop.monitoring.drift import run_drift

    result = run_drift(settings, drift_model["name"], version=drift_model["few"], min_rows=100)

    assert result.verdict == "insufficient_data"
    assert not result.blocks_promotion
    assert result.n_current == 20 and "20" in result.reason
    assert result.share_drifted is None and result.report_path is None
    row = _stored(settings, result.report_id)
    assert row["verdict"] == "insufficient_data" and row["n_current"] == 20


def test_since_window_excludes_older_rows(settings: Settings, drift_model) -> None:
    from riskloop.monitoring.drift import run_drift

    future = datetime.now(UTC) + timedelta(days=1)
    result = run_drift(settings, drift_model["name"], version=drift_model["ok"], since=future, min_rows=1)
    assert result.verdict == "insufficient_data" and result.n_current == 0


def test_riskloop_monitor_raises_one_drift_alert_to_the_sink(settings: Settings, drift_model) -> None:
    """`riskloop monitor` on a drifted champion: one input_drift incident at the local HTTP sink."""
    from mlflow import MlflowClient
    from sinks import http_sink
    from typer.testing import CliRunner

    from riskloop.cli import app

    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    client.set_registered_model_alias(drift_model["name"], "champion", drift_model["shift"])
    try:
        with http_sink() as http:
            env = {"RISKLOOP_ALERT_SLACK_WEBHOOK_URL": http.url("/slack"), "RISKLOOP_ALERT_RAISE_AFTER": "1",
                   "RISKLOOP_ALERT_MIN_SAMPLES": "100"}
            for _ in range(2):  # the second run is the same incident: no second alert
                out = CliRunner().invoke(app, ["monitor", "--model", drift_model["name"]], env=env)
                assert out.exit_code == 0, out.output
                # the result is one JSON object on stdout (MLflow's "View run" lines must not land there)
                printed = json.loads(out.stdout)
                assert printed["model_version"] == drift_model["shift"] and printed["verdict"] != "ok"
            drift_alerts = [json.loads(b)["text"] for b in http.bodies("/slack") if b"input_drift" in b]
    finally:
        client.set_registered_model_alias(drift_model["name"], "champion", drift_model["ok"])
    assert len(drift_alerts) == 1, drift_alerts
    text = drift_alerts[0]
    assert f"[FIRING] input_drift {drift_model['name']}" in text and "amount" in text
    assert "report: file://" in text and "runbook: docs/runbooks/input_drift.md" in text


def test_until_bounds_the_window_like_a_scheduled_interval(settings: Settings, drift_model) -> None:
    """A scheduled (or backfilled) monitor run checks its own interval: rows at or after ``until`` are out."""
    from riskloop.monitoring.drift import run_drift

    everything = run_drift(settings, drift_model["name"], version=drift_model["few"], min_rows=1,
                           log_to_mlflow=False)
    assert everything.n_current > 0
    past = datetime(2000, 1, 1, tzinfo=UTC)
    assert run_drift(settings, drift_model["name"], version=drift_model["few"], until=past, min_rows=1,
                     log_to_mlflow=False).n_current == 0
    bounded = run_drift(settings, drift_model["name"], version=drift_model["few"], since=past,
                        until=everything.window_end, min_rows=1, log_to_mlflow=False)
    # window_end is the newest row's decided_at: a half-open interval ending there leaves it out.
    assert bounded.n_current == everything.n_current - 1
    assert bounded.window_end < everything.window_end


def test_a_recorded_drift_check_reads_back_as_it_was_made(settings: Settings, drift_model) -> None:
    """What the promote DAG gates on: the stored check, by its id or as the model's latest."""
    from riskloop.monitoring.drift import load_drift, run_drift

    made = run_drift(settings, drift_model["name"], version=drift_model["shift"], min_rows=50, log_to_mlflow=False)
    by_id = load_drift(settings, report_id=made.report_id)
    assert by_id is not None
    assert (by_id.report_id, by_id.model_version, by_id.verdict, by_id.reason, by_id.n_current) == (
        made.report_id, made.model_version, made.verdict, made.reason, made.n_current)
    assert by_id.per_feature == made.per_feature and by_id.score_drift == made.score_drift
    # jsonb keeps no key order: the inputs come back as a set, which is all the gate reads.
    assert sorted(by_id.drifted_features) == sorted(made.drifted_features)
    assert by_id.blocks_promotion == made.blocks_promotion
    assert load_drift(settings, model_name=drift_model["name"]).report_id == made.report_id  # the latest
    assert load_drift(settings, report_id="00000000-0000-0000-0000-000000000000") is None
    with pytest.raises(ValueError):
        load_drift(settings)


DATA_NOW = datetime(2024, 3, 31, 12, tzinfo=UTC)  # newest transaction: the warehouse's "now"
TEST_WINDOW_START = datetime(2024, 3, 1, tzinfo=UTC)  # register()'s test_start


def plant_transactions(settings: Settings, rows: list[tuple[str, datetime, int]]) -> None:
    """``marts.fct_transactions`` rows (payment_id, tx_at, is_fraud) in the settings' warehouse."""
    from fixtures_marts import DDL

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        conn.execute("create schema if not exists marts")
        conn.execute("drop table if exists marts.fct_transactions")
        conn.execute(f"create table marts.fct_transactions ({DDL['fct_transactions']})")
        with conn.cursor() as cur:
            cur.executemany(
                "insert into marts.fct_transactions (payment_id, transaction_id, customer_id, terminal_id, tx_at, "
                "amount, amount_minor, is_weekend, is_night, is_fraud, refunded) "
                "values (%s, %s, 'c', 't', %s, 10, 1000, 0, 0, %s, 0)",
                [(pid, i, at, label) for i, (pid, at, label) in enumerate(rows)])


@pytest.fixture(scope="module")
def matured_model(stack_env: dict[str, str]) -> dict:
    """A version with test predictions, scored on 300 transactions whose labels matured (fraud rate
    40%, far above the test window's) plus 40 too recent ones, all frauds, that must not count."""
    from fixtures_marts import isolated_settings

    settings = isolated_settings("riskloop_monitoring_matured")
    name = f"riskloop-fraud-matured-{uuid.uuid4().hex[:6]}"
    test = synth(1000, seed=6)
    version = register(settings, name, synth(3000, seed=1), synth(1000, seed=2), aliases=("champion",), test=test)
    rng = np.random.default_rng(9)
    matured, recent = synth(300, seed=8), synth(40, seed=10)
    labels = rng.binomial(1, 0.4, len(matured))
    # the test window's payments (2024-03-01 .. 03-15, the version's test_start/test_end): the reference
    # fraud rate of target drift; production's decisions come after it and have matured by DATA_NOW
    window = [(f"pay-test-{i}", TEST_WINDOW_START + timedelta(minutes=20 * i), int(y))
              for i, y in enumerate(test["is_fraud"])]
    old = [DATA_NOW - timedelta(days=8 + i % 8, hours=1) for i in range(len(matured))]
    ids = [f"pay-old-{i}" for i in range(len(matured))]
    recent_ids = [f"pay-new-{i}" for i in range(len(recent))]
    plant_transactions(settings, window + list(zip(ids, old, labels.tolist(), strict=True)) +
                       [(pid, DATA_NOW - timedelta(days=2), 1) for pid in recent_ids[:-1]] +
                       [(recent_ids[-1], DATA_NOW, 1)])
    scores = model_scores(settings, name, version, matured)
    log_decisions(settings, name, version, matured, scores, transaction_ids=ids)
    # a replay of the first 20 requests (same transaction, same score): each transaction counts once
    log_decisions(settings, name, version, matured.head(20), scores[:20], transaction_ids=ids[:20])
    log_decisions(settings, name, version, recent, model_scores(settings, name, version, recent),
                  transaction_ids=recent_ids)
    return {"settings": settings, "name": name, "version": version, "labels": labels, "scores": scores,
            "test_labels": test["is_fraud"]}


def test_realised_performance_and_target_drift_on_matured_labels(matured_model) -> None:
    from mlflow import MlflowClient
    from sklearn.metrics import average_precision_score, roc_auc_score

    from riskloop.monitoring.checks import performance_check
    from riskloop.monitoring.drift import DriftResult, load_drift, run_drift

    settings, labels, scores = matured_model["settings"], matured_model["labels"], matured_model["scores"]
    result = run_drift(settings, matured_model["name"], alias="champion", min_rows=100, min_matured=250)

    perf = result.performance
    assert perf is not None, result.reason
    assert perf.n_matured == 300 and perf.n_positive == int(labels.sum())  # recent and replayed rows left out
    assert perf.auc_roc == pytest.approx(roc_auc_score(labels, scores))
    assert perf.average_precision == pytest.approx(average_precision_score(labels, scores))
    assert perf.ap_ci95_low < perf.average_precision < perf.ap_ci95_high  # its bootstrap interval
    assert perf.data_now == DATA_NOW.isoformat() and perf.label_delay_days == settings.label_delay_days
    client = MlflowClient(settings.tracking_uri)
    training_run = client.get_run(client.get_model_version(matured_model["name"], matured_model["version"]).run_id)
    assert perf.test_average_precision == pytest.approx(training_run.data.metrics["average_precision"])
    assert perf.test_auc_roc == pytest.approx(training_run.data.metrics["auc_roc"])
    run = client.get_run(result.mlflow_run_id)
    # target drift: ~40% matured fraud vs the test window's rate over all its payments (final labels,
    # as production matures), Evidently's two-proportion Z-test
    target = result.target_drift
    assert target is not None and target.method == "z" and target.drifted and target.p_value < 0.01
    assert target.current_rate == pytest.approx(labels.mean()) and target.n_current == 300
    test_labels = matured_model["test_labels"]
    assert target.reference_rate == pytest.approx(test_labels.mean()) and target.n_reference == len(test_labels)
    assert target.reference_rate < 0.3
    assert result.verdict == "warning" and "fraud rate drifted" in result.reason

    # recorded everywhere the issue names: Postgres (and read back), MLflow, the alert
    assert DriftResult.from_dict(result.to_dict()) == result
    back = load_drift(settings, report_id=result.report_id)
    assert back.performance == perf and back.target_drift == target and back.report_url == result.report_url
    assert run.data.metrics["realised_average_precision"] == pytest.approx(perf.average_precision)
    assert run.data.metrics["realised_auc_roc"] == pytest.approx(perf.auc_roc)
    assert run.data.metrics["realised_average_precision_ci95_high"] == pytest.approx(perf.ap_ci95_high)
    assert run.data.metrics["target_rate_current"] == pytest.approx(target.current_rate)
    check = performance_check(settings, result)
    assert check.kind == "performance_drop" and check.breached is True
    assert "fraud rate drifted" in check.summary and f"AP {perf.average_precision:.3g}" in check.summary

    # too few matured labels for the operator's minimum: not assessed, and said so
    thin = run_drift(settings, matured_model["name"], alias="champion", min_rows=100, min_matured=301,
                     log_to_mlflow=False)
    assert thin.performance is None and thin.target_drift is None
    assert "300 matured labels (< 301)" in thin.reason
    assert performance_check(settings, thin).breached is None
