"""The whole loop, closed: a fraud pattern the champion misses reaches analysts through the review
queue, their verdicts become labels at the time they were given, and the next model learns it.

A small simulated world ending ten days ago is landed, built and trained on (the champion). Then
card testing starts, live, in the days after it: bursts of tiny night-time payments on a few dozen cards, each scored by the
champion through the scoring API before its authorisation arrives through the webhook receiver and
the stream. The champion scores them as the harmless small payments they look like, but the
velocity rule (fraud-v2, on the stream's 10-minute window) sends the rest of each burst to review;
the review decisions open cases; analysts close them as fraud_confirmed through the API. The next
batch build turns those verdicts into labels known at the cases' closing time, the next training
run (labels as known now) learns them, and the challenger scores the pattern far higher than the
champion did. Real receiver, stream, scoring API, case queue, dbt, Feast, MLflow and XGBoost."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from fixtures_marts import isolated_settings

from riskloop.core.db import dsn
from riskloop.core.signatures import WebhookSettings, signed_headers
from riskloop.simulator.webhooks import standard_body
from tests.conftest import free_port
from tests.test_webhooks import serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SECRET = "whsec_dGhlLWxvb3AtdGVzdC1zaWduaW5nLWtleS0zMmJ5"
SCORER, ANALYST = "loop-scorer-key-0000000000", "loop-analyst-key-000000000"
DAYS, CUSTOMERS = 35, 300
CARDS, BURST = 30, 12  # tested cards, payments per burst
TRAIN_PARAMS = {"n_estimators": 80, "max_depth": 4}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_analysts_verdicts_teach_the_next_model(stack_env: dict[str, str], tmp_path) -> None:
    from pydantic import SecretStr

    from riskloop import simulator
    from riskloop.data.ingest import load_landing
    from riskloop.data.transform import run_dbt
    from riskloop.features import store as features
    from riskloop.features.stream import StreamConsumer
    from serving.app import create_app
    from serving.config import ServingSettings
    from serving.model import load_model
    from serving.webhooks import create_webhook_app
    from training.train import train_fraud

    # a configured warehouse needs its card-token key (landed files are tokenised on load)
    settings = isolated_settings("riskloop_t_loop").model_copy(
        update={"fraud_model_name": f"test-loop-{int(time.time())}", "pan_token_key": SecretStr("loop-test-token-key")})
    # the world ends ten days ago: the live payments after it are the newest the platform has seen
    # (the stream's windows then win over the batch's), and still days before the next training run
    world_end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    start = world_end - timedelta(days=DAYS)

    # --- the world so far, and the champion trained on it ---------------------------------------
    sim = simulator.simulate(days=DAYS, customers=CUSTOMERS, seed=11, start_date=str(start.date()))
    simulator.write(sim, tmp_path / "landing")
    load_landing(settings, tmp_path / "landing")
    run_dbt(settings, ["build"])
    features.apply(settings)
    features.materialize(settings, world_end)
    champion = train_fraud(settings, TRAIN_PARAMS)
    store = features.feature_store(settings)

    # --- card testing starts, live: scored, then authorised, then streamed -----------------------
    rng = random.Random(5)
    customers = rng.sample(sorted({str(c) for c in sim.transactions["CUSTOMER_ID"].unique()}), CARDS)
    first = world_end
    bursts = []
    for i, customer in enumerate(customers):
        t0 = first + timedelta(days=i % 4, hours=1 + rng.random() * 3)  # four nights of card testing
        bursts.append([{
            "payment_id": f"pay_loop_{i:03d}_{j:02d}", "event_id": f"evt_loop_{i:03d}_{j:02d}",
            "processor": "standard", "event_type": "payment.authorized",
            "occurred_at": t0 + timedelta(seconds=40 * j), "card_token": f"tok_{customer}",
            "customer_id": customer, "terminal_id": str(rng.randrange(2 * CUSTOMERS)),
            "amount_minor": rng.randrange(50, 200), "currency": "EUR", "dispute_id": None} for j in range(BURST)])

    port = free_port()
    hooks = WebhookSettings(secrets_standard=SECRET)
    # a generous online-read budget: on a busy test machine a payment must not be decided degraded
    cfg = ServingSettings(api_keys=f"{SCORER}:scorer,{ANALYST}:analyst", model_poll_s=0, log_linger_s=0.0,
                          online_timeout_s=5.0)
    decided: dict[str, dict[str, Any]] = {}
    for _ in serve_in_thread(create_webhook_app(settings, hooks), port):
        with StreamConsumer(settings, store=store) as consumer, TestClient(create_app(settings, cfg)) as api:
            assert api.get("/v1/model", headers=_auth(SCORER)).json()["version"] == champion.version
            for j in range(BURST):
                for burst in bursts:
                    ev = burst[j]
                    r = api.post("/v1/score/fraud", headers=_auth(SCORER), json={
                        "transaction_id": ev["payment_id"], "card_token": ev["card_token"],
                        "customer_id": ev["customer_id"], "terminal_id": ev["terminal_id"],
                        "amount_minor": ev["amount_minor"], "currency": "EUR",
                        "timestamp": ev["occurred_at"].isoformat()})
                    assert r.status_code == 200, r.text
                    decided[ev["payment_id"]] = r.json()
                    body = standard_body(ev)
                    assert httpx.post(f"http://127.0.0.1:{port}/webhooks/standard", content=body,
                                      headers=signed_headers("standard", body, SECRET, int(time.time()))).status_code == 200
                consumer.run_once()

            # the champion misses the pattern; the velocity rule sends the bursts' tails to review
            assert [p for p, d in decided.items() if d["degraded"]] == []
            champion_scores = np.array([d["score"] for d in decided.values()])
            reviewed = [p for p, d in decided.items() if d["decision"] == "review"]
            by_velocity = [p for p in reviewed if "CARD_VELOCITY_10M" in decided[p]["rules"]]
            assert len(by_velocity) >= CARDS * (BURST - 6), {p: decided[p]["rules"] for p in reviewed}

            # the analysts work the queue through the API: every open case is fraud
            closed = 0
            while True:
                page = api.get("/v1/cases", headers=_auth(ANALYST), params={"limit": 100}).json()
                if not page["cases"]:
                    break
                for case in page["cases"]:
                    url = f"/v1/cases/{case['case_id']}"
                    assert api.post(f"{url}/claim", headers=_auth(ANALYST)).status_code == 200
                    done = api.post(f"{url}/close", headers=_auth(ANALYST), json={
                        "disposition": "fraud_confirmed", "reason": "card testing: burst of tiny night payments"})
                    assert done.status_code == 200, done.text
                    closed += 1
            assert closed == CARDS  # one case per tested card, every flagged decision of the card in it
    verdicts_at = datetime.now(UTC)

    # --- the next batch build: the verdicts are labels, known when they were given -----------------
    run_dbt(settings, ["build"])
    with psycopg.connect(dsn(settings)) as conn:
        labels = conn.execute(
            "select payment_id, is_fraud, fraud_known_at, label_source from marts.fct_transactions "
            "where payment_id like 'pay_loop_%%'").fetchall()
    by_payment = {p: (f, k, s) for p, f, k, s in labels}
    assert len(by_payment) == CARDS * BURST  # every live payment is in the fact
    for p in reviewed:
        is_fraud, known_at, source = by_payment[p]
        assert is_fraud == 1 and source == "case" and first < known_at <= verdicts_at
    # the allowed heads of the bursts were never reviewed: no verdict, no label
    labelled_heads = {p: (decided[p]["decision"], decided[p]["rules"], by_payment[p])
                      for p in decided if p not in reviewed and by_payment[p][0] != 0}
    assert labelled_heads == {}

    # --- the next training run, with the labels as known now ----------------------------------
    # training on the three weeks up to the last night of card testing (tested on that night), labels
    # as known when the model is trained: now, after the analysts' verdicts
    last_night = first + timedelta(days=3)
    challenger = train_fraud(settings, TRAIN_PARAMS, train_days=21, delay_days=0, test_days=1, maturity_days=0,
                             label_cutoff_days=(verdicts_at.date() - last_night.date()).days + 1)
    assert challenger.version != champion.version
    model = load_model(settings.tracking_uri, settings.fraud_model_name, "challenger", version=challenger.version)
    from riskloop.features import datasets

    frame = datasets.fraud_dataset(store, [(first, first + timedelta(days=4))])
    pattern = frame[frame["card_token"].isin({b[0]["card_token"] for b in bursts}) & (frame["amount"] < 2.01)]
    pattern = pattern[pattern["event_timestamp"].dt.hour < 6]
    assert len(pattern) >= len(reviewed)
    x = pattern[list(model.features)].to_numpy(dtype=np.float64)
    challenger_scores = np.array([model.predict(row.reshape(1, -1))[0] for row in x])
    # the same payments: the challenger now sees the pattern the champion missed
    # (the world's calendar moves with the date the test runs: margins, not a fixed figure)
    assert float(np.mean(champion_scores)) < 0.3 and float(np.mean(challenger_scores)) > float(np.mean(champion_scores)) + 0.25
    print(f"loop: champion mean score {np.mean(champion_scores):.3f} on {len(champion_scores)} pattern payments; "
          f"challenger {np.mean(challenger_scores):.3f}; {len(reviewed)} reviewed, {closed} cases closed")
