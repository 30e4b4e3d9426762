"""A credit challenger's canary, end to end: refused without one, routed, gated and promoted with one.

Set-up as test_credit_gate (synthetic marts written by hand, Feast applied, versions trained by
``training``) with ``RISKLOOP_CANARY_REQUIRED`` on: v1 the champion, v2 the challenger (the same recipe
with four more trees). Applications go to the real app (lifespan, poller, decision-log writer) through
FastAPI's TestClient; the canary is started through ``riskloop canary`` as an operator would, and
serving picks it up by polling, on the credit endpoint as on the fraud one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from principals import TRAINER, cli_env
from typer.testing import CliRunner

from riskloop.core.config import Settings
from riskloop.core.db import dsn

pytestmark = pytest.mark.slow

ADMIN_KEY = "test-credit-canary-admin-key-01"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


class World:
    def __init__(self, settings: Settings, applications: Any, champion: str, challenger: str) -> None:
        self.settings, self.applications = settings, applications
        self.champion, self.challenger = champion, challenger

    @property
    def name(self) -> str:
        return self.settings.credit_model_name

    def aliases(self) -> dict[str, str]:
        from riskloop.models.registry import mlflow_client

        return dict(mlflow_client(self.settings.tracking_uri).get_registered_model(self.name).aliases)


@pytest.fixture(scope="module")
def world(stack_env: dict[str, str]) -> Iterator[World]:
    from fixtures_marts import isolated_settings, make_marts, write_marts

    from riskloop.features import store as features
    from training.train import train_credit

    settings = isolated_settings("riskloop_t_credit_canary").model_copy(update={
        "credit_model_name": f"test-credit-canary-{uuid.uuid4().hex[:8]}", "canary_required": True,
        "canary_psi_bins": 5,
        # marts written by hand (no contract run); fairness on this small world's bands is test_credit_gate's
        "promotion_require_contracts": False, "fairness_air_floor": 0.0, "fairness_gap_margin": 1.0,
        "fairness_min_group": 1})
    marts = make_marts(days=30, customers=60, terminals=30, seed=17)
    write_marts(settings, marts)
    features.apply(settings)
    champion = train_credit(settings, {"n_estimators": 40}, principal=TRAINER).version
    challenger = train_credit(settings, {"n_estimators": 44}, principal=TRAINER).version
    yield World(settings, marts.tables()["credit_features"], champion, challenger)


def _app(world: World, **cfg: Any):
    from serving.app import create_app
    from serving.config import ServingSettings

    cfg.setdefault("api_keys", f"{ADMIN_KEY}:admin")
    cfg.setdefault("model_poll_s", 0)
    cfg.setdefault("canary_poll_s", 0.2)
    return create_app(world.settings, ServingSettings(**cfg))


def _applications(world: World, n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` new applications (each its own id) with the marts' applicants' attributes."""
    rows = world.applications.iloc[[i % len(world.applications) for i in range(n)]]
    return [{"application_id": f"{prefix}-{i}", "customer_id": r.customer_id, "applicant": {
        "amount_minor": max(1, int(round(r.amount * 100))), "currency": "EUR", "term_months": int(r.term_months),
        "annual_income_minor": int(round(r.annual_income * 100)), "debt_to_income": min(float(r.debt_to_income), 100.0),
        "n_delinquencies": int(r.n_delinquencies), "credit_history_months": int(r.credit_history_months),
        "utilization": min(float(r.utilization), 10.0), "kyc_level": int(r.kyc_level), "pep": bool(r.pep)}}
        for i, r in enumerate(rows.itertuples())]


def _cli(world: World, *args: str, who: str = "alice") -> dict[str, Any]:
    from riskloop.cli import app

    env = {"RISKLOOP_DATABASE_URL": world.settings.database_url, "RISKLOOP_CREDIT_MODEL_NAME": world.name,
           "RISKLOOP_CANARY_PSI_BINS": str(world.settings.canary_psi_bins), **cli_env(who)}
    out = CliRunner().invoke(app, [*args], env=env)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def _wait(predicate, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def _logged(settings: Settings, ids: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def done() -> bool:
        with psycopg.connect(dsn(settings)) as conn:
            cur = conn.execute("select * from serving.decision_log where decision_id = any(%s::uuid[])", (ids,))
            names = [d.name for d in cur.description]
            rows[:] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        return len(rows) == len(ids)

    _wait(done, 30, f"{len(ids)} decisions in the log")
    return rows


def test_serving_refuses_a_credit_challenger_without_a_started_canary(world: World) -> None:
    """Asked (by its settings) to route a canary share, serving loads the credit challenger, finds no running
    canary of it, refuses it (paged, listed by /readyz) and the champion decides every application."""
    from riskloop.governance import canary

    assert canary.current_state(world.settings, world.name) is None
    bodies = _applications(world, 20, "refused")
    with TestClient(_app(world, mode="canary", canary_share=1.0), headers=AUTH) as c:
        _wait(lambda: any(r["key"] == "credit:challenger" for r in c.get("/readyz").json()["checks"]["refused_models"]),
              20, "the credit challenger refused")
        refused = next(r for r in c.get("/readyz").json()["checks"]["refused_models"] if r["key"] == "credit:challenger")
        assert refused["version"] == world.challenger and "no canary or shadow" in refused["reason"]
        info = c.get("/v1/canary").json()["credit"]
        assert info["model_name"] == world.name and info["effective_mode"] == "champion"
        assert info["challenger"] is None and "no canary or shadow" in info["challenger_error"]
        answers = [c.post("/v1/score/credit", json=b).json() for b in bodies]
    assert {(a["model"]["alias"], a["model"]["version"]) for a in answers} == {("champion", world.champion)}
    # and the gate, with a canary required, refuses a challenger that never had one
    assert canary.gate(world.settings, world.name, world.challenger, world.champion).verdict == "missing"


def test_a_credit_challenger_goes_through_canary_gate_and_promotion(world: World) -> None:
    from riskloop.governance import canary
    from riskloop.governance.promotion import evaluate_promotion
    from serving.routing import bucket

    share = 0.4
    started = _cli(world, "canary", "start", "--model", world.name, "--share", str(share), "--min-minutes", "0",
                   "--min-decisions", "60")
    assert started["mode"] == "canary" and started["challenger_version"] == world.challenger
    assert started["champion_version"] == world.champion and started["changed_by"] == "alice"
    bodies = _applications(world, 300, "canary")
    try:
        with TestClient(_app(world), headers=AUTH) as c:
            _wait(lambda: c.get("/v1/canary").json()["credit"]["effective_mode"] == "canary", 20, "canary picked up")
            info = c.get("/v1/canary").json()
            assert info["credit"]["challenger"]["version"] == world.challenger
            assert info["effective_mode"] == "champion"  # the fraud model's routing is its own
            answers = [c.post("/v1/score/credit", json=b).json() for b in bodies]
        # Deterministic per application: exactly those whose id hashes under the share go to the challenger.
        expected = {b["application_id"] for b in bodies if bucket(b["application_id"]) < share}
        routed = {b["application_id"] for b, a in zip(bodies, answers, strict=True)
                  if a["model"] == {"name": world.name, "version": world.challenger, "alias": "challenger"}}
        assert routed == expected and 0.3 < len(routed) / len(bodies) < 0.5
        assert all(a["model"]["version"] == world.champion for a in answers if a["model"]["alias"] == "champion")
        assert not any(a["degraded"] for a in answers)
        rows = _logged(world.settings, [a["decision_id"] for a in answers])
        assert {r["serving_mode"] for r in rows} == {"canary"} and {r["product"] for r in rows} == {"credit"}
        assert {(r["model_alias"], r["model_version"]) for r in rows} == {("challenger", world.challenger),
                                                                          ("champion", world.champion)}
        assert all(r["shadow"] is None for r in rows)

        # The gate, from the decision log, with the credit product's figures per arm.
        verdict = canary.gate(world.settings, world.name, world.challenger, world.champion)
        assert verdict.verdict == "passed", verdict.reason
        st = verdict.evidence["stats"]
        assert st["challenger"]["n_scored"] == len(expected) and st["champion"]["n_scored"] == 300 - len(expected)
        for arm in ("champion", "challenger"):  # the share of declines and refers, from the logged decisions
            adverse = [r for r in rows if r["model_alias"] == arm and r["decision"] in ("decline", "refer")]
            assert st[arm]["adverse_rate"] == pytest.approx(len(adverse) / st[arm]["n_scored"])
        assert abs(st["challenger"]["adverse_rate"] - st["champion"]["adverse_rate"]) <= \
            world.settings.canary_max_adverse_rate_change
        strict = world.settings.model_copy(update={"canary_max_adverse_rate_change": 1e-9})
        if st["challenger"]["adverse_rate"] != st["champion"]["adverse_rate"]:
            assert "adverse decisions" in canary.gate(strict, world.name, world.challenger, world.champion).reason
        status = _cli(world, "canary", "status", "--model", world.name)
        assert status["state"]["mode"] == "canary" and status["gate"]["verdict"] == "passed"

        # Approved by a reviewer (not the trainer), the challenger is promoted on that canary, which ends.
        _cli(world, "review", "approve", world.name, world.challenger, "--reason", "canary and card read")
        d = evaluate_promotion(world.settings, world.name, margin=1.0)  # metrics are test_credit_gate's concern
        assert d.decision == "promoted", d.reason
        assert d.canary_verdict == "passed" and d.canary_id == started["canary_id"]
        assert world.aliases()["champion"] == world.challenger
        ended = canary.current_state(world.settings, world.name)
        assert ended.event == "promoted" and ended.mode == "off" and ended.canary_id == d.canary_id
    finally:
        canary.end(world.settings, world.name, "stop", "test clean-up")


def test_a_credit_shadow_scores_both_and_the_champion_decides(world: World) -> None:
    """After the promotion above the resting state is champion = challenger; point @challenger at v1 again
    and shadow it: every application decided by the champion, the challenger's score logged beside it."""
    from riskloop.governance import canary
    from riskloop.models.registry import mlflow_client

    champion = world.aliases()["champion"]
    other = world.champion if champion == world.challenger else world.challenger
    mlflow_client(world.settings.tracking_uri).set_registered_model_alias(world.name, "challenger", other)
    canary.start(world.settings, world.name, mode="shadow", min_minutes=0, min_decisions=0, actor="alice")
    bodies = _applications(world, 30, "shadow")
    try:
        with TestClient(_app(world, canary_watch=False), headers=AUTH) as c:
            _wait(lambda: c.get("/v1/canary").json()["credit"]["effective_mode"] == "shadow", 20, "shadow picked up")
            answers = [c.post("/v1/score/credit", json=b).json() for b in bodies]
    finally:
        canary.end(world.settings, world.name, "stop", "test clean-up", actor="alice")
    assert {(a["model"]["alias"], a["model"]["version"]) for a in answers} == {("champion", champion)}
    rows = _logged(world.settings, [a["decision_id"] for a in answers])
    assert {r["serving_mode"] for r in rows} == {"shadow"}
    for r in rows:
        assert r["shadow"]["alias"] == "challenger" and r["shadow"]["version"] == other
        assert 0 <= r["shadow"]["score"] <= 1 and "error" not in r["shadow"]


def test_judge_bounds_the_change_in_adverse_decisions() -> None:
    """The gate's bound on the share of decisions against the customer, per arm (no stack needed)."""
    from datetime import UTC, datetime

    from riskloop.governance.canary import ArmStats, CanaryStats, judge, tripwires

    s, now = Settings(), datetime.now(UTC)
    champ = ArmStats(n=1000, n_scored=1000, p99_ms=4.0, n_adverse=200)  # 20 % declined or referred
    same = CanaryStats("canary", now, now, champ, ArmStats(n=100, n_scored=100, p99_ms=4.0, p99_low_ms=3.0,
                                                           n_adverse=25), psi=0.02)
    assert judge(s, same) == []
    harsher = CanaryStats("canary", now, now, champ, ArmStats(n=100, n_scored=100, p99_ms=4.0, p99_low_ms=3.0,
                                                              n_adverse=45), psi=0.02)
    (breach,) = judge(s, harsher)
    assert "adverse decisions 45.00% vs champion 20.00%" in breach
    assert tripwires(s, harsher) == []  # a gate figure, not a reason to roll back at once
    # Shadow: the challenger decided nothing, so it has no adverse rate and nothing to bound.
    shadow = CanaryStats("shadow", now, now, champ, ArmStats(n=1000, n_scored=1000), psi=0.02)
    assert shadow.challenger.adverse_rate is None and judge(s, shadow) == []
