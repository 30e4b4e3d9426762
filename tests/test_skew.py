"""Training-serving skew of the real-time windows, measured as users measure it: payments arrive live
(receiver → inbox → stream → online store), the scoring API decides with the online values and logs
them with their event times, dbt builds the marts, and ``riskloop features skew`` compares what each
decision used with what training reads point-in-time for the same payment. Real receiver, stream,
scoring API, dbt, Postgres and Feast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from fixtures_marts import isolated_settings

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.decisions.log import TABLE
from tests.conftest import free_port
from tests.test_realtime import STANDARD_SECRET, STRIPE_SECRET, event, post
from tests.test_webhooks import serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ADMIN_KEY = "skew-admin-key-0123456789abcdef"
RULE_FEATURES = ("card_tx_count_10m", "customer_tx_count_1h")
POLICY = """
policy: fraud
version: 1
thresholds: {step_up: 0.3, review: 0.5, deny: 0.9}
rules:
  - {id: CARD_VELOCITY_10M, kind: feature_above, feature: card_tx_count_10m, max: 3, action: review}
  - {id: CUSTOMER_VELOCITY_1H, kind: feature_above, feature: customer_tx_count_1h, max: 10, action: review}
"""


@dataclass
class Env:
    settings: Settings
    url: str  # the webhook receiver
    store: Any
    policy: Path


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from riskloop.core.signatures import WebhookSettings
    from riskloop.data.ingest import create_raw_tables
    from riskloop.features import store as features
    from serving.webhooks import create_webhook_app

    settings = isolated_settings("riskloop_t_skew").model_copy(update={"fraud_model_name": "test-skew-no-model"})
    with psycopg.connect(dsn(settings)) as conn:  # the payment fact reads the landed files too (none here)
        create_raw_tables(conn)
    policy = tmp_path_factory.mktemp("policy") / "fraud-v1.yaml"
    policy.write_text(POLICY)
    port = free_port()
    cfg = WebhookSettings(secrets_stripe=STRIPE_SECRET, secrets_standard=STANDARD_SECRET)
    for _ in serve_in_thread(create_webhook_app(settings, cfg), port):
        features.apply(settings)
        yield Env(settings, f"http://127.0.0.1:{port}", features.feature_store(settings), policy)


def score(env: Env, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from serving.app import create_app
    from serving.config import ServingSettings

    cfg = ServingSettings(api_keys=f"{ADMIN_KEY}:admin", model_poll_s=0, fraud_policy=env.policy)
    with TestClient(create_app(env.settings, cfg), headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        out = []
        for body in requests:
            r = client.post("/v1/score/fraud", json=body)
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out  # the app's shutdown flushed the log


def request(card: str, customer: str, at: datetime, payment_id: str | None = None) -> dict[str, Any]:
    return {"card_token": card, "customer_id": customer, "terminal_id": "T1", "amount_minor": 2_000,
            "currency": "EUR", "timestamp": at.isoformat(), "transaction_id": payment_id}


def skew_cli(env: Env) -> tuple[int, dict[str, Any]]:
    run = subprocess.run([sys.executable, "-m", "riskloop", "features", "skew", "--json"], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "RISKLOOP_DATABASE_URL": env.settings.database_url})
    assert run.stdout, run.stderr
    return run.returncode, json.loads(run.stdout)


def test_a_live_payment_trains_on_the_windows_it_was_scored_with(env: Env) -> None:
    """Payments arrive live, the next one is scored (before its own authorisation arrives, as in
    production) and then authorised live too; after the batch build, the training set has that
    payment with exactly the windows the decision read online, and the skew check finds nothing."""
    from riskloop.data.transform import run_dbt
    from riskloop.features import datasets
    from riskloop.features.stream import StreamConsumer
    from riskloop.monitoring.skew import measure

    run = f"sk{int(time.time())}"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    # card A: a burst of 5 in 4 minutes; card B: two payments 72 minutes apart; customer c1 pays with both
    evs = [event(f"{run}a{i}", "standard", base + timedelta(minutes=i), "A", "c1", 1_000 + i) for i in range(5)]
    evs += [event(f"{run}b0", "stripe", base - timedelta(minutes=70), "B", "c1", 500),
            event(f"{run}b1", "stripe", base + timedelta(minutes=2), "B", "c2", 700)]
    scored_at = base + timedelta(minutes=5)
    sixth = event(f"{run}a5", "standard", scored_at, "A", "c1", 2_000)  # the payment the decision is about
    with StreamConsumer(env.settings, store=env.store) as consumer:
        for ev in evs:
            post(env, ev)  # type: ignore[arg-type]
        consumer.run_once()
        card_a, card_b = evs[0]["card_token"], evs[5]["card_token"]
        cust1, cust2 = evs[0]["customer_id"], evs[6]["customer_id"]
        now = datetime.now(UTC)
        decided = score(env, [request(card_a, cust1, scored_at, sixth["payment_id"]), request(card_b, cust2, now),
                              request(f"{run}_unknown", f"{run}_nobody", now)])
        post(env, sixth)  # type: ignore[arg-type]
        consumer.run_once()
    assert decided[0]["rules"] == ["CARD_VELOCITY_10M"] and decided[0]["decision"] == "review"
    assert decided[1]["rules"] == [] and decided[2]["rules"] == []
    with psycopg.connect(dsn(env.settings)) as conn:
        logged = {str(r[0]): (r[1], r[2]) for r in conn.execute(
            f"select decision_id, features, feature_timestamps from {TABLE}").fetchall()}
    features_a, stamps_a = logged[decided[0]["decision_id"]]
    assert features_a == {"card_tx_count_10m": 5, "customer_tx_count_1h": 5}  # B's first payment is 70 min old
    assert datetime.fromisoformat(stamps_a["card_realtime"]) == base + timedelta(minutes=4)

    run_dbt(env.settings, ["build", "--indirect-selection", "cautious"])
    training = datasets.fraud_dataset(env.store, [(scored_at, scored_at + timedelta(seconds=1))])
    row = training[training["card_token"] == card_a]
    assert len(row) == 1  # the sixth payment: card A's only one in that second
    assert {f: int(row[f].iloc[0]) for f in RULE_FEATURES} == features_a
    with psycopg.connect(dsn(env.settings)) as conn:  # known from its live receipt, before any file
        received = conn.execute("select received_at from marts.fct_transactions where payment_id = %s",
                                (sixth["payment_id"],)).fetchone()
    assert received is not None and received[0] > scored_at

    report = measure(env.settings, store=env.store)
    assert report.decisions == 3
    assert report.compared == 3 * len(RULE_FEATURES) and report.matched == report.compared
    assert report.mismatches == [] and sum(report.documented.values()) == 0
    code, out = skew_cli(env)
    assert code == 0 and out["compared"] == report.compared and out["mismatches"] == []

    # the batch disagreeing with what the decision used is a mismatch, listed with both sides
    with psycopg.connect(dsn(env.settings)) as conn:
        conn.execute("update marts.card_realtime_windows set card_tx_count_10m = card_tx_count_10m + 1 "
                     "where card_token = %s and event_timestamp = %s", (card_a, base + timedelta(minutes=4)))
    code, out = skew_cli(env)
    assert code == 1 and out["compared"] == report.compared
    assert [(m["decision_id"], m["feature"], m["kind"], m["online"]["value"], m["offline"]["value"])
            for m in out["mismatches"]] == [(decided[0]["decision_id"], "card_tx_count_10m", "value", 5, 6)]


def test_materialize_fills_files_only_keys_and_never_rewinds_the_stream(env: Env) -> None:
    """The stream-fed views are materialized from their marts too (payments known only from files),
    and their online tables keep the newest row whoever writes: a batch built before the latest live
    payment, or any older write, leaves the stream's row in place."""
    import pandas as pd

    from riskloop.core import windows
    from riskloop.data.transform import run_dbt
    from riskloop.features import store as features
    from riskloop.features.stream import StreamConsumer
    from tests.test_realtime import online

    card = windows.entity("card")
    names = windows.feature_names(card)
    run = f"mz{int(time.time())}"
    now = datetime.now(UTC).replace(microsecond=0)
    live = event(f"{run}live", "standard", now - timedelta(minutes=1), "L", "cl", 4_200)
    with StreamConsumer(env.settings, store=env.store) as consumer:
        post(env, live)  # type: ignore[arg-type]
        consumer.run_once()
    live_card, files_card = live["card_token"], f"{run}_F"
    stream_row = online(env, card, [live_card])[live_card]  # type: ignore[arg-type]
    assert stream_row["card_tx_count_10m"] == 1 and stream_row[windows.TIMESTAMP_FIELD] == now - timedelta(minutes=1)

    # the mart as a batch built before the live payment would have it, plus a card known only from files
    run_dbt(env.settings, ["build", "--select", "+card_realtime_windows", "--indirect-selection", "cautious"])
    with psycopg.connect(dsn(env.settings)) as conn:
        with conn.cursor().copy(f"copy marts.{windows.mart_name(card)} (card_token, event_timestamp, "
                                f"{', '.join(names)}) from stdin") as copy:
            copy.write_row([live_card, now - timedelta(minutes=30), *[7] * len(names)])
            copy.write_row([files_card, now - timedelta(minutes=5), *range(1, len(names) + 1)])
    features.materialize(env.settings, now + timedelta(seconds=1), start=now - timedelta(hours=2),
                         views=[windows.view_name(card)])
    got = online(env, card, [live_card, files_card])  # type: ignore[arg-type]
    assert got[live_card] == stream_row
    assert got[files_card] == {**dict(zip(names, range(1, len(names) + 1), strict=True)),
                               windows.TIMESTAMP_FIELD: now - timedelta(minutes=5)}

    def write(ts: datetime, value: int) -> None:
        env.store.write_to_online_store(windows.view_name(card), pd.DataFrame(
            {"card_token": [live_card], windows.TIMESTAMP_FIELD: [ts], **{n: [value] for n in names}}))

    write(now - timedelta(minutes=2), 99)  # older than the stored row: dropped by the table's trigger
    assert online(env, card, [live_card])[live_card] == stream_row  # type: ignore[arg-type]
    write(now, 3)  # newer: lands
    assert online(env, card, [live_card])[live_card]["card_tx_count_10m"] == 3  # type: ignore[arg-type]
