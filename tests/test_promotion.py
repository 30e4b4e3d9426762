"""The promotion gate against a real MLflow registry and a real ``governance`` schema.

Two small XGBoost models are registered under a fresh name per test: a "good" one (trained on
the real labels) and a "bad" one (trained on shuffled labels). The common test set is synthetic
and handed in through ``load_test_set`` (the default rebuilds it through Feast and the marts,
which these fast tests do not load); both models are genuinely scored on it by the gate.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from principals import API_KEYS, TRAINER, bearer, cli_env, principal

from riskloop.core.config import Settings
from riskloop.core.identity import Principal
from riskloop.governance.authors import record_author
from riskloop.models.artifacts import CONTRACT_TAG_PREFIX

FEATURES = ["amount", "is_night", "terminal_risk_7d", "customer_nb_tx_1d"]
TEST_START, TEST_END = "2024-03-08T00:00:00+00:00", "2024-03-15T00:00:00+00:00"


def synth(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "amount": rng.lognormal(3.5, 0.8, n),
        "is_night": rng.binomial(1, 0.25, n).astype(float),
        "terminal_risk_7d": rng.beta(1, 30, n),
        "customer_nb_tx_1d": rng.poisson(3, n).astype(float),
        "customer_id": rng.integers(0, 400, n),
        "event_timestamp": pd.Timestamp(TEST_START) + pd.to_timedelta(rng.uniform(0, 7 * 86400, n), unit="s"),
    })
    logit = -4 + 0.02 * df["amount"] + 50 * df["terminal_risk_7d"] + 1.0 * df["is_night"]
    df["label"] = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    return df


@pytest.fixture(scope="module")
def classifiers() -> dict[str, object]:
    import xgboost as xgb

    train = synth(3000, seed=11)
    params = {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.3, "n_jobs": 1, "random_state": 0}
    good = xgb.XGBClassifier(**params).fit(train[FEATURES], train["label"])
    shuffled = np.random.default_rng(0).permutation(train["label"].to_numpy())
    bad = xgb.XGBClassifier(**params).fit(train[FEATURES], shuffled)
    return {"good": good, "bad": bad}


PASSED_CONTRACTS = {"raw": "passed 2024-03-01T00:05:00+00:00", "marts": "passed 2024-03-01T00:09:00+00:00"}


def register(settings: Settings, name: str, clf, aliases: tuple[str, ...], metrics: dict | None = None,
             contracts: dict[str, str] | None = PASSED_CONTRACTS, author: Principal | None = TRAINER) -> str:
    """Log and register like ``training`` does (features, test window, reference sample, aliases, the
    data-contract results of the training data as run tags, the author principal)."""
    import mlflow
    import mlflow.xgboost
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    try:
        mlflow.set_experiment("riskloop-tests")
        x = synth(50, seed=99)[FEATURES]
        with mlflow.start_run(), tempfile.TemporaryDirectory() as tmp:
            mlflow.log_params({"features": ",".join(FEATURES), "test_start": TEST_START, "test_end": TEST_END,
                               "train_start": "2024-02-23T00:00:00+00:00", "train_end": "2024-03-01T00:00:00+00:00",
                               "label_cutoff": "2024-03-08T00:00:00+00:00"})
            if metrics:
                mlflow.log_metrics(metrics)
            mlflow.set_tags({CONTRACT_TAG_PREFIX + schema: v for schema, v in (contracts or {}).items()})
            x.to_parquet(Path(tmp) / "features.parquet")
            mlflow.log_artifact(str(Path(tmp) / "features.parquet"), artifact_path="reference")
            info = mlflow.xgboost.log_model(clf, name="model", registered_model_name=name,
                                            pip_requirements=["xgboost"],
                                            signature=infer_signature(x, clf.predict_proba(x)[:, 1]))
    finally:
        mlflow.set_tracking_uri(before)
    version = str(info.registered_model_version)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    if author is not None:
        record_author(settings, name, version, author, run_id=info.run_id, client=client)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    return version


class Loader:
    """A test-set loader that remembers which window the gate asked for."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def __call__(self, settings: Settings, run_params: dict[str, str]) -> pd.DataFrame:
        self.calls.append(run_params)
        return synth(3000, seed=12)


def aliases(settings: Settings, name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient(settings.tracking_uri, settings.tracking_uri).get_registered_model(name).aliases)


def version_tags(settings: Settings, name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, settings.tracking_uri).get_model_version(name, version).tags


def stored(settings: Settings, decision_id: str) -> dict:
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        cur = conn.execute("select * from governance.promotion_decisions where decision_id = %s", (decision_id,))
        cols = [d.name for d in cur.description]
        row = cur.fetchone()
    assert row is not None, "decision not recorded in governance.promotion_decisions"
    return dict(zip(cols, row, strict=True))


def approve(settings: Settings, name: str, version: str, reviewer: str = "alice",
            verdict: str = "approve") -> dict:
    """``riskloop review approve|reject`` through the real CLI; the recorded row as JSON."""
    from typer.testing import CliRunner

    from riskloop.cli import app

    out = CliRunner().invoke(app, ["review", verdict, name, version, "--reason", f"{verdict}d after reading the card"],
                             env={**cli_env(reviewer), **({"RISKLOOP_DATABASE_URL": settings.database_url}
                                                          if settings.database_url else {})})
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


@pytest.fixture()
def settings(stack_env: dict[str, str]) -> Settings:
    """The metric, drift and approval gates on their own: these synthetic models (four made-up inputs)
    cannot be served, so no canary can run for them, and the canary requirement is waived explicitly
    (RISKLOOP_CANARY_REQUIRED=false). The canary gate is tested below and in test_canary.py."""
    return Settings(canary_required=False)


def fresh_name() -> str:
    return f"riskloop-fraud-gate-{uuid.uuid4().hex[:6]}"


def test_better_challenger_is_promoted(settings: Settings, classifiers) -> None:
    from riskloop.governance.promotion import evaluate_promotion

    name = fresh_name()
    v1 = register(settings, name, classifiers["bad"], ("champion", "challenger"))
    v2 = register(settings, name, classifiers["good"], ("challenger",))
    loader = Loader()
    approval = approve(settings, name, v2)

    d = evaluate_promotion(settings, name, load_test_set=loader)

    assert d.decision == "promoted", d.reason
    assert d.approved_by == "alice" and d.approval_id == approval["approval_id"]
    assert d.content_hash == approval["content_hash"] and "approved by alice" in d.reason
    assert (d.champion_version, d.challenger_version) == (v1, v2)
    assert loader.calls and loader.calls[0]["test_start"] == TEST_START and loader.calls[0]["test_end"] == TEST_END
    assert d.challenger_metrics["auc_roc"] > d.champion_metrics["auc_roc"] + 0.1
    assert set(d.challenger_metrics) == {"auc_roc", "average_precision", "card_precision_at_100"}
    assert aliases(settings, name)["champion"] == v2
    row = stored(settings, d.decision_id)
    assert row["decision"] == "promoted" and row["new_champion_version"] == v2
    assert row["challenger_metrics"]["auc_roc"] == pytest.approx(d.challenger_metrics["auc_roc"])
    assert row["champion_metrics"]["auc_roc"] == pytest.approx(d.champion_metrics["auc_roc"])
    assert row["drift_verdict"] is None and row["n_test"] == 3000
    assert row["approved_by"] == "alice" and row["content_hash"] == approval["content_hash"]
    tags = version_tags(settings, name, v2)
    assert tags["promotion.decision"] == "promoted" and tags["promotion.decision_id"] == d.decision_id
    assert "not worse" in tags["promotion.reason"] and "data contracts passed (marts, raw)" in d.reason
    assert tags["promotion.contracts_verdict"] == "passed" and row["contracts_evidence"] == PASSED_CONTRACTS
    assert version_tags(settings, name, v1)["promotion.superseded_by"] == v2

    # challenger == champion now: nothing to do, and it is recorded
    again = evaluate_promotion(settings, name, load_test_set=loader)
    assert again.decision == "no_change" and "already the champion" in again.reason
    assert stored(settings, again.decision_id)["decision"] == "no_change"


def test_worse_challenger_is_refused_with_reason(settings: Settings, classifiers) -> None:
    from riskloop.governance.promotion import evaluate_promotion

    name = fresh_name()
    v1 = register(settings, name, classifiers["good"], ("champion", "challenger"))
    v2 = register(settings, name, classifiers["bad"], ("challenger",))

    d = evaluate_promotion(settings, name, margin=0.01, load_test_set=Loader())

    assert d.decision == "refused"
    assert "worse than champion" in d.reason and "auc_roc" in d.reason
    assert aliases(settings, name)["champion"] == v1
    row = stored(settings, d.decision_id)
    assert row["decision"] == "refused" and row["new_champion_version"] == v1 and row["margin"] == 0.01
    tags = version_tags(settings, name, v2)
    assert tags["promotion.decision"] == "refused" and "worse" in tags["promotion.reason"]
    assert float(tags["promotion.champion.auc_roc"]) > float(tags["promotion.challenger.auc_roc"])


def test_critical_drift_blocks_promotion(settings: Settings, classifiers) -> None:
    from riskloop.governance.promotion import evaluate_promotion
    from riskloop.monitoring.drift import ColumnDrift, DriftResult

    name = fresh_name()
    v1 = register(settings, name, classifiers["bad"], ("champion", "challenger"))
    v2 = register(settings, name, classifiers["good"], ("challenger",))
    drift = DriftResult(
        report_id=str(uuid.uuid4()), model_name=name, model_version=v1, model_alias="champion",
        verdict="critical", reason="3/4 inputs drifted", n_reference=1000, n_current=500,
        features=tuple(FEATURES), share_drifted=0.75,
        per_feature={f: ColumnDrift(f, "K-S p_value", 0.05, 0.0 if f != "is_night" else 0.9, f != "is_night")
                     for f in FEATURES})
    approve(settings, name, v2)

    d = evaluate_promotion(settings, name, drift=drift, load_test_set=Loader())

    assert d.decision == "refused"
    assert "critical input drift" in d.reason and "amount" in d.reason
    assert d.challenger_metrics["auc_roc"] > d.champion_metrics["auc_roc"]  # better and approved, yet blocked
    assert "approval gate" not in d.reason
    assert aliases(settings, name)["champion"] == v1
    row = stored(settings, d.decision_id)
    assert row["drift_verdict"] == "critical" and str(row["drift_report_id"]) == drift.report_id
    assert version_tags(settings, name, v2)["promotion.drift_verdict"] == "critical"


def test_no_challenger_is_no_change(settings: Settings, classifiers) -> None:
    from riskloop.governance.promotion import evaluate_promotion

    name = fresh_name()
    v1 = register(settings, name, classifiers["good"], ("champion",))
    loader = Loader()

    d = evaluate_promotion(settings, name, load_test_set=loader)

    assert d.decision == "no_change" and "no 'challenger'" in d.reason
    assert not loader.calls  # nothing evaluated
    assert aliases(settings, name) == {"champion": v1}
    assert stored(settings, d.decision_id)["decision"] == "no_change"


def test_reviewer_approval_gate_four_eyes_bound_to_the_content_hash(settings: Settings, classifiers) -> None:
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from pydantic import SecretStr
    from sinks import http_sink
    from typer.testing import CliRunner

    from riskloop.cli import app
    from riskloop.governance.promotion import evaluate_promotion

    name = fresh_name()
    v1 = register(settings, name, classifiers["bad"], ("champion", "challenger"))
    author = "carol"  # a reviewer who trained this one
    v2 = register(settings, name, classifiers["good"], ("challenger",), author=principal(author))
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    cli = CliRunner()

    # not approved: better on metrics, still refused, and on-call hears of it
    with http_sink() as http:
        gate_settings = settings.model_copy(update={"alert_slack_webhook_url": SecretStr(http.url("/slack"))})
        d = evaluate_promotion(gate_settings, name, load_test_set=Loader())
        (alert,) = [json.loads(b)["text"] for b in http.bodies("/slack")]
    assert d.decision == "refused" and "no reviewer approval" in d.reason and "not worse" not in d.reason
    assert aliases(settings, name)["champion"] == v1
    assert f"[FIRING] promotion_blocked {name}" in alert and f"v{v2} NOT promoted" in alert
    assert "docs/runbooks/promotion_blocked.md" in alert
    assert stored(settings, d.decision_id)["content_hash"] == d.content_hash and len(d.content_hash) == 64

    # the author cannot approve; a reason is required
    out = cli.invoke(app, ["review", "approve", name, v2, "--reason", "lgtm"], env=cli_env(author))
    assert out.exit_code == 2 and "cannot approve" in " ".join(out.output.split())
    out = cli.invoke(app, ["review", "approve", name, v2], env=cli_env("alice"))
    assert out.exit_code != 0 and "--reason" in out.output
    out = cli.invoke(app, ["review", "approve", name, v2, "--reason", "   "], env=cli_env("alice"))
    assert out.exit_code == 2 and "reason is required" in " ".join(out.output.split())
    listed = json.loads(cli.invoke(app, ["review", "list", "--model", name, "--json"], env=cli_env("alice")).stdout)
    assert listed == [{**listed[0], "model_name": name, "version": v2, "champion_version": v1, "review": "pending",
                       "author": author}]

    # a rejection blocks even after an approval; a later approval lifts it
    approve(settings, name, v2, reviewer="bob", verdict="reject")
    assert "rejected by bob" in evaluate_promotion(settings, name, load_test_set=Loader()).reason
    approval = approve(settings, name, v2)
    assert approval["content_hash"] == d.content_hash and approval["run_author"] == author
    card = json.loads(cli.invoke(app, ["review", "show", name]).stdout)
    assert card["version"] == v2 and card["content_hash"] == d.content_hash and card["author"] == author
    assert [r["verdict"] for r in card["reviews"]] == ["rejected", "approved"]
    assert card["last_gate"]["decision"] == "refused" and "auc_roc" in card["last_gate"]["challenger_metrics"]

    # the artifact changes after the approval: the approval no longer binds
    src = client.get_model_version_download_uri(name, v2)
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "notes.txt"
        extra.write_text("swapped after review")
        get_artifact_repository(src, tracking_uri=settings.tracking_uri).log_artifact(str(extra))
    d = evaluate_promotion(settings, name, load_test_set=Loader())
    assert d.decision == "refused" and "review it again" in d.reason and d.content_hash != approval["content_hash"]

    again = approve(settings, name, v2)
    d = evaluate_promotion(settings, name, load_test_set=Loader())
    assert d.decision == "promoted" and d.approval_id == again["approval_id"], d.reason
    assert aliases(settings, name)["champion"] == v2

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update governance.model_approvals set reviewer = 'mallory'")
        conn.rollback()
        for reviewer, run_author in ((author, author), (author.upper(), author), ("alice", None)):
            with pytest.raises(psycopg.errors.CheckViolation):  # the table itself refuses self-approval
                conn.execute("insert into governance.model_approvals values (gen_random_uuid(), now(), %s, %s, %s, "
                             "'approved', %s, 'mine', null, %s)", (name, v2, "0" * 64, reviewer, run_author))
            conn.rollback()


def test_promotion_refused_without_a_passed_canary(settings: Settings, classifiers) -> None:
    """With the canary required (the default), a better, approved challenger still waits for its canary."""
    from riskloop.governance import canary
    from riskloop.governance.promotion import evaluate_promotion

    gated = settings.model_copy(update={"canary_required": True})
    name = fresh_name()
    v1 = register(settings, name, classifiers["bad"], ("champion", "challenger"))
    v2 = register(settings, name, classifiers["good"], ("challenger",))
    approve(settings, name, v2)

    d = evaluate_promotion(gated, name, load_test_set=Loader())
    assert d.decision == "refused" and d.canary_verdict == "missing"
    assert f"canary gate: no canary phase for v{v2}" in d.reason and "not worse" not in d.reason
    assert aliases(settings, name)["champion"] == v1
    row = stored(settings, d.decision_id)
    assert row["canary_verdict"] == "missing" and "riskloop canary start" in row["canary_evidence"]["reason"]

    # a canary that has not reached its minimums is no better than none
    state = canary.start(gated, name, share=0.1, min_minutes=30, min_decisions=500)
    try:
        d = evaluate_promotion(gated, name, load_test_set=Loader())
        assert d.decision == "refused" and d.canary_verdict == "insufficient" and d.canary_id == state.canary_id
        assert "0 of 500 scored challenger decisions" in d.reason
        assert version_tags(settings, name, v2)["canary.verdict"] == "insufficient"
    finally:
        canary.end(gated, name, "stop", "test over")
    assert aliases(settings, name)["champion"] == v1
    # the explicit opt-out is recorded as such
    d = evaluate_promotion(settings, name, load_test_set=Loader())
    assert d.decision == "promoted" and d.canary_verdict == "skipped" and "canary not required" in d.reason


def test_decisions_are_append_only(settings: Settings) -> None:
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        for table in ("governance.promotion_decisions", "governance.canary_state"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"update {table} set reason = 'x'")
            conn.rollback()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"delete from {table}")
            conn.rollback()


# --- end to end: real training, real Feast test window -------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_promotion_refused_unless_its_training_data_passed_the_contracts(settings: Settings, classifiers) -> None:
    """The data-contract gate reads what the challenger's training run recorded: a failed contract run
    refuses it, a missing one too (unless explicitly not required), whatever its metrics."""
    from riskloop.governance.promotion import evaluate_promotion

    name = fresh_name()
    v1 = register(settings, name, classifiers["bad"], ("champion", "challenger"))
    failed = {**PASSED_CONTRACTS, "raw": "failed 2024-03-01T00:05:00+00:00"}
    v2 = register(settings, name, classifiers["good"], ("challenger",), contracts=failed)
    approve(settings, name, v2)
    d = evaluate_promotion(settings, name, load_test_set=Loader())
    assert d.decision == "refused" and d.contracts_verdict == "failed", d.reason
    assert "data-contract gate: its training data failed data contracts: raw (failed 2024-03-01" in d.reason
    assert "marts" not in d.reason.split("data-contract gate:")[1].split(";")[0]
    row = stored(settings, d.decision_id)
    assert row["contracts_verdict"] == "failed" and row["contracts_evidence"] == failed
    assert version_tags(settings, name, v2)["promotion.contracts_verdict"] == "failed"

    v3 = register(settings, name, classifiers["good"], ("challenger",), contracts={"raw": PASSED_CONTRACTS["raw"]})
    approve(settings, name, v3)
    d = evaluate_promotion(settings, name, load_test_set=Loader())
    assert d.decision == "refused" and "no data-contract run of marts recorded" in d.reason
    assert aliases(settings, name)["champion"] == v1

    # explicitly not required: promoted, and the reason says what was not checked
    lax = settings.model_copy(update={"promotion_require_contracts": False})
    d = evaluate_promotion(lax, name, load_test_set=Loader())
    assert d.decision == "promoted" and "data contracts of marts not recorded, not required" in d.reason
    assert aliases(settings, name)["champion"] == v3


def test_gate_end_to_end_on_trained_models(stack_env: dict[str, str]) -> None:
    """Two versions trained by ``training``; the gate, run through the service API, rebuilds the test
    window through Feast.

    The challenger's recomputed metrics must equal those training logged for it on the same
    window: proof that the gate scores the very test set training used, not an approximation.
    """
    from fixtures_marts import isolated_settings, make_marts, write_marts

    from riskloop.features import store as features
    from riskloop.governance.promotion import _compare
    from riskloop.monitoring.drift import run_drift
    from training.train import train_fraud

    suffix = uuid.uuid4().hex[:8]
    settings = isolated_settings("riskloop_t_promotion").model_copy(
        # the metric gate here; these marts are written by hand, so no contract run ever checked them
        update={"fraud_model_name": f"test-fraud-gate-{suffix}", "canary_required": False,
                "promotion_require_contracts": False})
    write_marts(settings, make_marts(days=30, customers=60, terminals=30, seed=2))
    features.apply(settings)
    first = train_fraud(settings, {"n_estimators": 2, "max_depth": 1}, principal=TRAINER)
    second = train_fraud(settings, {"n_estimators": 40}, principal=TRAINER)

    # drift on the real reference artifact (features only, no score column); no traffic yet
    drift = run_drift(settings, settings.fraud_model_name, alias="champion", min_rows=50)
    assert drift.verdict == "insufficient_data" and drift.n_reference > 0 and drift.score_drift is None

    approve(settings, settings.fraud_model_name, second.version)

    # The gate through the service's API (POST /review/api/models/{name}/promote), as a reviewer: it
    # gates on the model's latest recorded drift check (the one above) and records the caller.
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingSettings

    scorer_key = "scorer-key-0123456789abc"
    app = create_app(settings, ServingSettings(api_keys=f"{API_KEYS},{scorer_key}:scorer"))
    url = f"/review/api/models/{settings.fraud_model_name}/promote"
    with TestClient(app) as client:
        bob, scorer = bearer("bob"), {"Authorization": f"Bearer {scorer_key}"}
        assert client.post(url, json={}, headers=scorer).status_code == 403
        assert client.post(url, json={}).status_code == 401
        assert client.post(url, json={"margin": -1}, headers=bob).status_code == 422
        missing = client.post("/review/api/models/no-such-model/promote", json={}, headers=bob)
        assert missing.status_code == 404 and "no registered model" in missing.json()["detail"]
        response = client.post(url, json={"margin": 0.0}, headers=bob)
    assert response.status_code == 200, response.text
    d = response.json()

    assert (d["champion_version"], d["challenger_version"]) == (first.version, second.version)
    assert d["drift_report_id"] == drift.report_id and d["drift_verdict"] == "insufficient_data"
    for m in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert d["challenger_metrics"][m] == pytest.approx(second.metrics[m]), m
        assert d["champion_metrics"][m] == pytest.approx(first.metrics[m]), m  # same window in this setup
    assert d["n_test"] and d["test_start"] is not None
    expected, _ = _compare(d["champion_metrics"], d["challenger_metrics"], 0.0)
    assert d["decision"] == ("promoted" if expected else "refused"), d["reason"]
    assert aliases(settings, settings.fraud_model_name)["champion"] == (second.version if expected else first.version)
    assert stored(settings, d["decision_id"])["decided_by"] == "bob"


def test_promote_dag_gates_on_the_drift_check_it_is_given(settings: Settings, classifiers, monkeypatch) -> None:
    """The riskloop_promote DAG (dag.test) reads the recorded drift check back and records its
    decision against that very report: the evidence the monitor emitted, not a fresh re-run. It acts
    as the workers' service principal, and records the user who triggered the run (``dag_test``
    under ``dag.test()``), not the worker's operating-system user."""
    from riskloop.monitoring.drift import run_drift
    from riskloop.ops.orchestrate import run_dag

    name = fresh_name()
    version = register(settings, name, classifiers["good"], ("champion", "challenger"))
    drift = run_drift(settings, name, log_to_mlflow=False)  # no decisions yet: insufficient_data, recorded
    for var, value in cli_env("svc-airflow").items():  # the workers' key (run_dag passes the environment on)
        monkeypatch.setenv(var, value)
    run_dag(settings, "riskloop_promote", conf={"model_name": name, "report_id": drift.report_id})

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        rows = conn.execute("select decision, reason, drift_report_id::text, drift_verdict, challenger_version, "
                            "decided_by from governance.promotion_decisions where model_name = %s", (name,)).fetchall()
    assert len(rows) == 1, rows
    decision, reason, report_id, verdict, challenger, decided_by = rows[0]
    assert decided_by == "svc-airflow (triggered by dag_test)"
    assert (decision, report_id, verdict, challenger) == ("no_change", drift.report_id, "insufficient_data", version)
    assert "already the champion" in reason
