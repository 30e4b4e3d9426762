"""Credit decisions with adverse-action reasons, and ``riskloop decisions replay`` (real stack).

One set-up for both: synthetic marts → Feast → ``train_fraud`` + ``train_credit`` under model
names of this module's own → the app under TestClient.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from principals import TRAINER
from psycopg.types.json import Jsonb

from riskloop.core.db import dsn

pytestmark = pytest.mark.slow

KEY = "credit-replay-admin-key-00000"
AUTH = {"Authorization": f"Bearer {KEY}"}
APPLICANT = {"amount_minor": 1_500_000, "currency": "EUR", "term_months": 36, "annual_income_minor": 4_200_000,
             "debt_to_income": 0.3, "n_delinquencies": 0, "credit_history_months": 120, "utilization": 0.3,
             "kyc_level": 2, "pep": False}
RISKY = {**APPLICANT, "debt_to_income": 1.8, "n_delinquencies": 6, "utilization": 0.98, "credit_history_months": 3,
         "annual_income_minor": 1_200_000}


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[Any]:
    from fixtures_marts import isolated_settings, make_marts, write_marts

    from riskloop.features import store as features
    from training.train import train_credit, train_fraud

    tag = uuid.uuid4().hex[:8]
    settings = isolated_settings("riskloop_t_serving_credit").model_copy(update={
        "fraud_model_name": f"test-replay-fraud-{tag}", "credit_model_name": f"test-credit-{tag}"})
    marts = make_marts(days=30, customers=60, terminals=30, seed=11)
    write_marts(settings, marts)
    features.apply(settings)
    features.materialize(settings, marts.as_of.to_pydatetime(), start=(marts.as_of - timedelta(days=400)).to_pydatetime())
    fraud = train_fraud(settings, {"n_estimators": 30})
    credit = train_credit(settings, {"n_estimators": 40})
    yield type("Stack", (), {"settings": settings, "marts": marts, "fraud": fraud, "credit": credit})


@pytest.fixture(scope="module")
def client(stack: Any) -> Iterator[TestClient]:
    from serving.app import create_app
    from serving.config import ServingSettings

    with TestClient(create_app(stack.settings, ServingSettings(api_keys=f"{KEY}:admin")), headers=AUTH) as c:
        yield c


def _logged(settings: Any, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with psycopg.connect(dsn(settings)) as conn:
            cur = conn.execute("select * from serving.decision_log where decision_id = %s", (decision_id,))
            row = cur.fetchone()
            if row:
                return dict(zip([d.name for d in cur.description], row, strict=True))
        time.sleep(0.05)
    raise AssertionError(f"{decision_id} not logged")


# --- credit ----------------------------------------------------------------------------------

def test_credit_new_applicant_contract(client: TestClient, stack: Any) -> None:
    r = client.post("/v1/score/credit", json={"application_id": "new-1", "customer_id": "c0001", "applicant": RISKY})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"decision_id", "decision", "score", "model", "reasons", "rules", "degraded",
                         "policy_version", "application_id"}
    assert body["model"] == {"name": stack.settings.credit_model_name, "version": stack.credit.version,
                             "alias": "champion"}
    assert body["policy_version"] == "credit-v1" and body["degraded"] is False
    assert body["decision"] in {"decline", "refer"}, body  # a very risky profile
    reasons = body["reasons"]
    assert 1 <= len(reasons) <= 4
    assert [x["contribution"] for x in reasons] == sorted((x["contribution"] for x in reasons), reverse=True)
    assert all(x["contribution"] > 0 and x["code"].startswith("C") and x["description"] for x in reasons)
    row = _logged(stack.settings, body["decision_id"])
    assert row["product"] == "credit" and row["policy_version"] == "credit-v1"
    assert row["features"]["amount"] == 15_000.0 and row["features"]["annual_income"] == 12_000.0
    assert row["features"]["pep"] == 0.0 and row["reasons"] == reasons


def test_credit_reasons_are_the_exact_top_contributions(client: TestClient, stack: Any) -> None:
    """Adverse-action reasons are this applicant's largest exact TreeSHAP contributions, recomputed here."""
    from serving.model import load_model

    body = client.post("/v1/score/credit", json={"applicant": RISKY}).json()
    model = load_model(stack.settings.tracking_uri, stack.settings.credit_model_name, "champion")
    row = _logged(stack.settings, body["decision_id"])
    x = np.asarray([[row["features"][n] for n in model.features]], dtype=np.float64)
    score, contribs = model.predict(x, exact=True)
    assert body["score"] == pytest.approx(score, abs=1e-12)
    per_feature = contribs[: len(model.features)]
    expected = [model.features[i] for i in np.argsort(-per_feature, kind="stable") if per_feature[i] > 0][:4]
    assert [x["feature"] for x in body["reasons"]] == expected
    # Exact SHAP: contributions + bias add up to the log-odds of the score.
    assert float(contribs.sum()) == pytest.approx(float(np.log(score / (1 - score))), abs=1e-4)


def test_credit_safe_applicant_is_approved_without_reasons(client: TestClient) -> None:
    body = client.post("/v1/score/credit", json={"applicant": {**APPLICANT, "debt_to_income": 0.05,
                                                              "utilization": 0.01, "credit_history_months": 400,
                                                              "annual_income_minor": 20_000_000}}).json()
    if body["decision"] == "approve":
        assert body["reasons"] == []
    else:  # the small synthetic model may still refer; then reasons are given
        assert body["reasons"]


def test_credit_existing_application_from_feast(client: TestClient, stack: Any) -> None:
    app_row = stack.marts.credit_features.iloc[-1]
    body = client.post("/v1/score/credit", json={"application_id": app_row.application_id}).json()
    assert body["degraded"] is False and body["application_id"] == app_row.application_id
    row = _logged(stack.settings, body["decision_id"])
    assert row["features"]["debt_to_income"] == pytest.approx(app_row.debt_to_income)
    assert row["features"]["kyc_level"] == app_row.kyc_level
    assert set(row["feature_timestamps"]) == {"credit_application"}
    assert client.post("/v1/score/credit", json={"application_id": "app-never-seen"}).status_code == 404


def test_credit_pep_is_referred(client: TestClient) -> None:
    body = client.post("/v1/score/credit", json={"applicant": {**APPLICANT, "pep": True}}).json()
    assert "PEP_MANUAL_REVIEW" in body["rules"] and body["decision"] in {"refer", "decline"}


@pytest.mark.parametrize("bad", [
    {},
    {"applicant": {**APPLICANT, "amount_minor": -1}},
    {"applicant": {**APPLICANT, "kyc_level": 3}},
    {"applicant": {**APPLICANT, "currency": "XYZ"}},
    {"applicant": {k: v for k, v in APPLICANT.items() if k != "annual_income_minor"}},
])
def test_credit_bad_input_is_422_and_not_logged(client: TestClient, bad: dict) -> None:
    assert client.post("/v1/score/credit", json=bad).status_code == 422
    assert client.app.state.writer.depth() == 0


def test_credit_roles(client: TestClient) -> None:
    assert client.post("/v1/score/credit", json={"applicant": APPLICANT}, headers={"Authorization": ""}
                       ).status_code == 401


# --- replay ----------------------------------------------------------------------------------

def _cli_replay(stack: Any, monkeypatch: pytest.MonkeyPatch, decision_id: str) -> tuple[int, dict]:
    from typer.testing import CliRunner

    from riskloop.cli import app

    monkeypatch.setenv("RISKLOOP_DATABASE_URL", stack.settings.database_url)
    result = CliRunner().invoke(app, ["decisions", "replay", decision_id, "--json"])
    out = result.stdout.strip().splitlines()
    return result.exit_code, (json.loads(out[-1]) if out and out[-1].startswith("{") else {})


def test_replay_fraud_and_credit_decisions_match(client: TestClient, stack: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tx = stack.marts.fct_transactions.iloc[-1]
    fraud = client.post("/v1/score/fraud", json={
        "card_token": "tok", "customer_id": tx.customer_id, "terminal_id": tx.terminal_id, "amount_minor": 70_000,
        "currency": "EUR", "timestamp": "2024-01-31T02:00:00+00:00", "device_id": "dev-r"}).json()
    assert fraud["degraded"] is False and "NEW_DEVICE_HIGH_AMOUNT" in fraud["rules"]
    credit = client.post("/v1/score/credit", json={"applicant": RISKY}).json()
    for body in (fraud, credit):
        _logged(stack.settings, body["decision_id"])
        code, result = _cli_replay(stack, monkeypatch, body["decision_id"])
        assert code == 0, result
        assert result["matches"] is True and result["replayed"]["decision"] == body["decision"]
        assert result["replayed"]["score"] == pytest.approx(body["score"], abs=1e-12)
    assert result["product"] == "credit"


def test_replay_detects_a_mismatch(client: TestClient, stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    body = client.post("/v1/score/credit", json={"applicant": RISKY}).json()
    row = _logged(stack.settings, body["decision_id"])
    # A forged row (appending is the only write the log allows): same inputs, a different outcome.
    forged = {**row, "decision_id": uuid.uuid4(), "decision": "approve", "reasons": []}
    cols = list(forged)
    with psycopg.connect(dsn(stack.settings)) as conn:
        conn.execute(f"insert into serving.decision_log ({', '.join(cols)}) values ({', '.join(['%s'] * len(cols))})",
                     [Jsonb(forged[c]) if isinstance(forged[c], (dict, list)) else forged[c] for c in cols])
    code, result = _cli_replay(stack, monkeypatch, str(forged["decision_id"]))
    assert code == 1 and result["matches"] is False
    assert any(m.startswith("decision") for m in result["mismatches"])
    code, _ = _cli_replay(stack, monkeypatch, str(uuid.uuid4()))
    assert code == 2


def test_a_promoted_credit_challenger_serves_without_restart(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The credit champion follows the gate's promotion within a poll, like the fraud champion (last in
    this file: it moves the module's champion)."""
    from test_promotion import approve

    from riskloop.governance.promotion import evaluate_promotion
    from serving.app import create_app
    from serving.config import ServingSettings
    from training.train import train_credit

    s = stack.settings.model_copy(update={"canary_required": False, "promotion_require_contracts": False,
                                          # this small world's age bands are a few dozen applicants each
                                          "fairness_air_floor": 0.0, "fairness_gap_margin": 1.0,
                                          "fairness_min_group": 1})
    with TestClient(create_app(s, ServingSettings(api_keys=f"{KEY}:admin", model_poll_s=0.2)), headers=AUTH) as c:
        before = c.post("/v1/score/credit", json={"application_id": "swap-1", "customer_id": "c0001",
                                                  "applicant": APPLICANT}).json()["model"]["version"]
        challenger = train_credit(s, {"n_estimators": 60}, seed=3, principal=TRAINER)
        monkeypatch.setenv("RISKLOOP_DATABASE_URL", s.database_url)
        approve(s, s.credit_model_name, challenger.version)
        decision = evaluate_promotion(s, s.credit_model_name, margin=1.0)
        assert decision.decision == "promoted", decision.reason
        deadline, served = time.monotonic() + 30, before
        while served != challenger.version and time.monotonic() < deadline:
            time.sleep(0.2)
            served = c.post("/v1/score/credit", json={"application_id": "swap-2", "customer_id": "c0001",
                                                      "applicant": APPLICANT}).json()["model"]["version"]
    assert (before, served) == (stack.credit.version, challenger.version)
