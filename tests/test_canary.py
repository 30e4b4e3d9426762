"""Canary and shadow serving, the canary gate and the automatic rollback, against the real stack.

Set-up as in test_serving (synthetic marts → Feast → ``train_fraud`` into MLflow) with a model name
of this module's own and three versions: v1 the champion, a *sound* challenger (the same recipe with four
more trees) and a *bad* one (base score 0.9: it scores every payment as likely fraud). Requests go to the
real app (lifespan, poller, decision-log writer) through FastAPI's TestClient; the canary state is
changed through ``riskloop canary`` exactly as an operator would, and serving picks it up by polling.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from principals import API_KEYS, TRAINER, cli_env, key
from pydantic import SecretStr
from typer.testing import CliRunner

from riskloop.core.config import Settings
from riskloop.core.db import dsn

pytestmark = pytest.mark.slow

ADMIN_KEY = "test-canary-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


class Stack:
    def __init__(self, settings: Settings, marts: Any, champion: str, sound: str, bad: str) -> None:
        self.settings, self.marts = settings, marts
        self.champion, self.sound, self.bad = champion, sound, bad

    @property
    def name(self) -> str:
        return self.settings.fraud_model_name

    def set_challenger(self, version: str) -> None:
        from riskloop.models.registry import mlflow_client

        mlflow_client(self.settings.tracking_uri).set_registered_model_alias(self.name, "challenger", version)

    def aliases(self) -> dict[str, str]:
        from riskloop.models.registry import mlflow_client

        return dict(mlflow_client(self.settings.tracking_uri).get_registered_model(self.name).aliases)


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    from fixtures_marts import isolated_settings, make_marts, write_marts

    from riskloop.features import store as features
    from training.train import train_fraud

    base = isolated_settings("riskloop_t_canary")
    # marts written by hand (no contract run checked them): the contract gate is test_promotion's concern
    # models of its own: the session's registry holds other tests' (a credit champion refused there pages too)
    suffix = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"fraud_model_name": f"test-canary-fraud-{suffix}",
                                       "credit_model_name": f"test-canary-credit-{suffix}",
                                       "canary_psi_bins": 5, "promotion_require_contracts": False})
    marts = make_marts(days=30, customers=60, terminals=30, seed=5)  # the same marts as test_serving
    write_marts(settings, marts)
    features.apply(settings)
    # Only the fraud model's views: the realtime views' marts are not among the synthetic ones.
    features.feature_store(settings).materialize(marts.as_of - timedelta(days=60), marts.as_of.to_pydatetime(),
                                                 feature_views=["customer_spending", "terminal_risk"])
    champion = train_fraud(settings, {"n_estimators": 40}, principal=TRAINER).version
    sound = train_fraud(settings, {"n_estimators": 44}, principal=TRAINER).version  # the champion plus four trees
    bad = train_fraud(settings, {"n_estimators": 5, "learning_rate": 0.01, "base_score": 0.9},
                      principal=TRAINER).version
    yield Stack(settings, marts, champion, sound, bad)


def _app(stack: Stack, settings: Settings | None = None, **cfg: Any):
    from serving.app import create_app
    from serving.config import ServingSettings

    cfg.setdefault("api_keys", f"{ADMIN_KEY}:admin")
    cfg.setdefault("model_poll_s", 0)
    cfg.setdefault("canary_poll_s", 0.2)
    return create_app(settings or stack.settings, ServingSettings(**cfg))


def _requests(stack: Stack, n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` distinct payments over the marts' customers and terminals (each its own transaction id)."""
    tx = stack.marts.fct_transactions
    rows = tx.iloc[[i % len(tx) for i in range(n)]]
    return [{"transaction_id": f"{prefix}-{i}", "card_token": f"tok_{r.customer_id}", "customer_id": r.customer_id,
             "terminal_id": r.terminal_id, "amount_minor": max(1, int(round(r.amount * 100))) % 400_000 + 1,
             "currency": "EUR", "timestamp": "2024-03-27T14:15:00+00:00"}
            for i, r in enumerate(rows.itertuples())]


def _cli(settings: Settings, *args: str) -> dict[str, Any]:
    """``riskloop canary …`` through the real CLI (environment = these settings)."""
    from riskloop.cli import app

    env = {"RISKLOOP_DATABASE_URL": settings.database_url, "RISKLOOP_FRAUD_MODEL_NAME": settings.fraud_model_name,
           "RISKLOOP_CANARY_PSI_BINS": str(settings.canary_psi_bins), **cli_env("alice")}
    out = CliRunner().invoke(app, ["canary", *args, "--model", settings.fraud_model_name], env=env)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def _rows(settings: Settings, where: str, params: tuple = ()) -> list[dict[str, Any]]:
    with psycopg.connect(dsn(settings)) as conn:
        cur = conn.execute(f"select * from serving.decision_log where {where}", params)
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _wait(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; the seconds it took (fails after ``timeout``)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - t0


def _logged(settings: Settings, ids: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def done() -> bool:
        rows[:] = _rows(settings, "decision_id = any(%s::uuid[])", (ids,))
        return len(rows) == len(ids)

    _wait(done, 20, f"{len(ids)} decisions in the log")
    return rows


def _stop(stack: Stack) -> None:
    from riskloop.governance import canary

    canary.end(stack.settings, stack.name, "stop", "test clean-up")


# --- canary routing, the gate --------------------------------------------------------------------------

def test_canary_routes_the_share_and_the_gate_judges_it(stack: Stack) -> None:
    from riskloop.governance import canary
    from serving.routing import bucket

    stack.set_challenger(stack.sound)
    share = 0.3
    started = _cli(stack.settings, "start", "--share", str(share), "--min-minutes", "0", "--min-decisions", "100")
    assert started["mode"] == "canary" and started["challenger_version"] == stack.sound
    assert started["changed_by"] == "alice"  # the principal of the CLI's key, not the OS user
    bodies = _requests(stack, 600, "canary")
    try:
        with TestClient(_app(stack), headers=AUTH) as c:
            info = c.get("/v1/canary").json()
            assert info["effective_mode"] == "canary" and info["challenger"]["version"] == stack.sound
            answers = [c.post("/v1/score/fraud", json=b).json() for b in bodies]
        # Deterministic per request: exactly the transactions whose hash falls under the share…
        expected = {b["transaction_id"] for b in bodies if bucket(b["transaction_id"]) < share}
        routed = {b["transaction_id"] for b, a in zip(bodies, answers, strict=True)
                  if a["model"] == {"name": stack.name, "version": stack.sound, "alias": "challenger"}}
        assert routed == expected
        assert 0.25 < len(routed) / len(bodies) < 0.35  # …which is the share in aggregate
        assert all(a["model"]["version"] == stack.champion for a in answers
                   if a["model"]["alias"] == "champion")
        rows = _logged(stack.settings, [a["decision_id"] for a in answers])
        assert {r["serving_mode"] for r in rows} == {"canary"}
        assert {(r["model_alias"], r["model_version"]) for r in rows} == {("challenger", stack.sound),
                                                                          ("champion", stack.champion)}

        # The gate, from the decision log: a sound challenger passes…
        verdict = canary.gate(stack.settings, stack.name, stack.sound, stack.champion)
        assert verdict.verdict == "passed", verdict.reason
        st = verdict.evidence["stats"]
        # (a decision degraded by a slow online read under load counts in its arm, unscored)
        assert st["challenger"]["n_scored"] + st["challenger"]["n_degraded"] == len(expected)
        assert st["champion"]["n_scored"] + st["champion"]["n_degraded"] == 600 - len(expected)
        assert st["psi"] is not None and st["psi"] <= stack.settings.canary_max_psi
        # The latency bound judges the p99's lower 95 % confidence bound: that order statistic of the arm.
        lat = sorted(r["latency_ms"] for r in rows if r["model_alias"] == "challenger")
        assert st["challenger"]["p99_low_ms"] == pytest.approx(lat[canary.quantile_lower_rank(len(lat)) - 1])
        assert st["challenger"]["p99_low_ms"] <= st["challenger"]["p99_ms"]
        # …and is refused, with the reason, when a bound is breached or the minimums are not met.
        strict = stack.settings.model_copy(update={"canary_max_psi": st["psi"] / 2})
        refused = canary.gate(strict, stack.name, stack.sound, stack.champion)
        assert refused.verdict == "failed" and "score PSI" in refused.reason
        status = _cli(stack.settings, "status")
        assert status["state"]["mode"] == "canary" and status["gate"]["verdict"] == "passed"

        # The promotion gate takes the passed canary as its evidence, promotes, and ends the canary.
        _promote_with_canary(stack)
    finally:
        _stop(stack)
        _set_alias(stack, "champion", stack.champion)
    short = canary.start(stack.settings, stack.name, share=0.3, min_minutes=60, min_decisions=10**6)
    try:
        pending = canary.gate(stack.settings, stack.name, stack.sound, stack.champion)
        assert pending.verdict == "insufficient" and "minutes" in pending.reason and pending.canary_id == \
            short.canary_id
    finally:
        _stop(stack)


def _set_alias(stack: Stack, alias: str, version: str) -> None:
    from riskloop.models.registry import mlflow_client

    mlflow_client(stack.settings.tracking_uri).set_registered_model_alias(stack.name, alias, version)


def _promote_with_canary(stack: Stack) -> None:
    from riskloop.cli import app
    from riskloop.governance import canary
    from riskloop.governance.promotion import evaluate_promotion

    env = {"RISKLOOP_DATABASE_URL": stack.settings.database_url, **cli_env("alice")}
    out = CliRunner().invoke(app, ["review", "approve", stack.name, stack.sound, "--reason", "canary and card read"],
                             env=env)
    assert out.exit_code == 0, out.output
    d = evaluate_promotion(stack.settings, stack.name, margin=1.0)  # metrics are test_promotion's concern
    assert d.decision == "promoted", d.reason
    assert d.canary_verdict == "passed" and "canary" in d.reason and d.canary_evidence["stats"]["psi"] is not None
    assert stack.aliases()["champion"] == stack.sound
    ended = canary.current_state(stack.settings, stack.name)
    assert ended.event == "promoted" and ended.mode == "off" and ended.canary_id == d.canary_id
    with psycopg.connect(dsn(stack.settings)) as conn:
        verdict, evidence = conn.execute("select canary_verdict, canary_evidence from governance.promotion_decisions "
                                         "where decision_id = %s", (d.decision_id,)).fetchone()
    assert verdict == "passed" and evidence["stats"]["challenger"]["n_scored"] > 0


def test_stop_reaches_serving_without_restart(stack: Stack) -> None:
    from riskloop.governance import canary

    stack.set_challenger(stack.sound)
    canary.start(stack.settings, stack.name, share=1.0, min_minutes=0, min_decisions=0)
    body = _requests(stack, 1, "stop")[0]
    try:
        with TestClient(_app(stack), headers=AUTH) as c:
            assert c.post("/v1/score/fraud", json=body).json()["model"]["alias"] == "challenger"
            _cli(stack.settings, "stop")
            _wait(lambda: c.get("/v1/canary").json()["effective_mode"] == "champion", 10, "stop picked up")
            assert c.post("/v1/score/fraud", json=body).json()["model"]["alias"] == "champion"
    finally:
        _stop(stack)


def test_shadow_scores_both_and_decides_with_champion(stack: Stack) -> None:
    from riskloop.governance import canary

    stack.set_challenger(stack.bad)  # its scores are far off: the champion's decisions must not move
    canary.start(stack.settings, stack.name, mode="shadow", min_minutes=0, min_decisions=0)
    bodies = _requests(stack, 40, "shadow")
    try:
        with TestClient(_app(stack, canary_watch=False), headers=AUTH) as c:
            answers = [c.post("/v1/score/fraud", json=b).json() for b in bodies]
    finally:
        _stop(stack)
    assert all(a["model"] == {"name": stack.name, "version": stack.champion, "alias": "champion"} for a in answers)
    rows = {str(r["decision_id"]): r for r in _logged(stack.settings, [a["decision_id"] for a in answers])}
    scored = [a for a in answers if not a["degraded"]]  # a slow online read under load degrades one
    assert len(scored) >= 35
    for a in scored:
        r = rows[a["decision_id"]]
        assert r["serving_mode"] == "shadow" and r["score"] == pytest.approx(a["score"], abs=1e-12)
        assert r["shadow"]["alias"] == "challenger" and r["shadow"]["version"] == stack.bad
        assert r["shadow"]["score"] > 0.5 > a["score"]  # the bad model's score, logged but not used
        assert "error" not in r["shadow"] and r["shadow"]["latency_ms"] > 0
    # The same requests scored by both: the figures show how far apart the two models are…
    status = _cli(stack.settings, "status")
    assert status["state"]["event"] == "stop" and status["stats"]["mode"] == "shadow"
    assert status["stats"]["challenger"]["n_scored"] == len(scored) and status["stats"]["psi"] > 1.0
    # …but a shadow phase is evidence for a reviewer, not a canary: it does not pass the gate.
    assert "gate" not in status
    assert canary.gate(stack.settings, stack.name, stack.bad, stack.champion).verdict == "missing"


def test_judge_names_each_breached_bound(stack: Stack) -> None:
    """The bounds on figures the log cannot easily be made to show (a slow or failing challenger)."""
    from datetime import UTC, datetime

    from riskloop.governance.canary import ArmStats, CanaryStats, judge, tripwires

    now = datetime.now(UTC)
    champ = ArmStats(n=1000, n_scored=990, n_degraded=10, p99_ms=4.0, p99_low_ms=3.5)
    fine = CanaryStats("canary", now, now, champ,
                       ArmStats(n=100, n_scored=99, n_degraded=1, p99_ms=5.5, p99_low_ms=5.0), psi=0.02)
    assert judge(stack.settings, fine) == [] and tripwires(stack.settings, fine) == []
    slow_failing = CanaryStats("canary", now, now, champ, ArmStats(n=100, n_scored=80, n_errors=19, n_degraded=1,
                                                                   p99_ms=300.0, p99_low_ms=280.0), psi=0.02)
    breaches = judge(stack.settings, slow_failing)
    assert len(breaches) == 2 and "p99 >= 280.00 ms at 95 % confidence (estimate 300.00 ms over 100) > 6.00 ms" \
        in breaches[0] and "20.00%" in breaches[1]
    trips = tripwires(stack.settings, slow_failing)
    assert len(trips) == 2 and "error+degraded rate 20.0%" in trips[0] and "p99 latency >= 280.0 ms" in trips[1]
    # A p99 made by two slow requests in a small arm (its lower bound within the bounds) is no evidence.
    outliers = CanaryStats("canary", now, now, champ,
                           ArmStats(n=100, n_scored=100, p99_ms=300.0, p99_low_ms=5.9), psi=0.02)
    assert judge(stack.settings, outliers) == [] and tripwires(stack.settings, outliers) == []
    busy = CanaryStats("canary", now, now, ArmStats(n=1000, n_scored=1000, p99_ms=290.0, p99_low_ms=280.0),
                       ArmStats(n=100, n_scored=100, p99_ms=300.0, p99_low_ms=295.0), psi=0.02)
    assert tripwires(stack.settings, busy) == []  # a busy machine slows both arms: not the challenger's fault
    thin = CanaryStats("canary", now, now, champ,
                       ArmStats(n=10, n_scored=0, n_errors=10, p99_ms=900.0, p99_low_ms=900.0), psi=None)
    assert tripwires(stack.settings, thin) == []  # too few decisions to judge: no rollback on noise
    assert "PSI undefined" in judge(stack.settings, thin)[-1]


# --- the tripwire: automatic rollback -----------------------------------------------------------------

def test_tripwire_rolls_back_under_load_without_failed_requests(stack: Stack) -> None:
    """Two serving apps (each its own poller, watchdog, connections: what two processes would have)
    share the canary of a challenger whose scores are far off; both route, one watches (the holder of
    the watcher's Postgres advisory lock, as one of several workers would be) and rolls back."""
    from contextlib import ExitStack

    from sinks import http_sink

    from riskloop.governance import canary

    stack.set_challenger(stack.bad)
    bodies = _requests(stack, 6000, "trip")
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()
    with http_sink() as sink, ExitStack() as apps:
        # The serving processes act, on their own, as the deployment's service principal (RISKLOOP_API_KEY).
        settings = stack.settings.model_copy(update={"alert_webhook_url": sink.url("/hook"),
                                                     "alert_webhook_secret": SecretStr("whsec_MDEyMzQ1Njc4OWFiY2RlZg=="),
                                                     "canary_watch_min_decisions": 30, "api_keys": API_KEYS,
                                                     "api_key": SecretStr(key("svc-airflow"))})
        state = canary.start(settings, stack.name, share=0.5, min_minutes=0, min_decisions=0)
        clients = [apps.enter_context(TestClient(_app(stack, settings), headers=AUTH)) for _ in range(2)]

        def load(k: int) -> None:
            c, i = clients[k % 2], k
            while not stop.is_set() and i < len(bodies):
                r = c.post("/v1/score/fraud", json=bodies[i])
                seen.append((r.status_code, r.json()["model"]["alias"] if r.status_code == 200 else r.text))
                i += 4

        workers = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for w in workers:
            w.start()
        try:
            took = _wait(lambda: not canary.current_state(settings, stack.name).active, 60, "rollback")
            for c in clients:
                _wait(lambda c=c: c.get("/v1/canary").json()["effective_mode"] == "champion", 10, "serving follows")
            time.sleep(0.2)  # requests that read the routing before the swap have answered
            n_after = len(seen)
            _wait(lambda: len(seen) > n_after + 40, 30, "more traffic after the rollback")
        finally:
            stop.set()
            for w in workers:
                w.join()
        print(f"canary rolled back {took:.1f}s after the load started")  # noqa: T201 - reported in -s runs
        assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
        assert "challenger" in {alias for _, alias in seen[:n_after]}
        assert {alias for _, alias in seen[n_after:]} == {"champion"}
        rolled = canary.current_state(settings, stack.name)
        assert rolled.event == "rollback" and rolled.share == 0 and rolled.canary_id == state.canary_id
        assert rolled.changed_by == "svc-airflow"  # the watcher's service principal, not the OS user
        assert "PSI" in rolled.reason and rolled.evidence["stats"]["psi"] > settings.canary_hard_max_psi
        with psycopg.connect(dsn(settings)) as conn:  # two watchers, one rollback
            (n_rollbacks,) = conn.execute("select count(*) from governance.canary_state where canary_id = %s "
                                          "and event = 'rollback'", (state.canary_id,)).fetchone()
        assert n_rollbacks == 1
        watchers = [c.get("/v1/canary").json()["tripwire_watcher"] for c in clients]
        assert sorted(watchers) == [False, True], watchers  # one leader, elected by the lock
        assert stack.aliases()["challenger"] == stack.champion  # @challenger back where it rests
        _wait(lambda: sink.bodies("/hook"), 10, "alert delivered")
        time.sleep(1.0)  # a second watcher's alert would have arrived by now
        (body,) = sink.bodies("/hook")
        alert = json.loads(body)["data"]
        assert alert["kind"] == "canary_rollback" and stack.bad in alert["summary"]
    # The rolled-back version cannot pass the gate.
    verdict = canary.gate(settings, stack.name, stack.bad, stack.champion)
    assert verdict.verdict == "rolled_back" and not verdict.ok
