"""A topic bridge writes the inbox rows the receiver writes (``riskloop.data.inbox_bridge``): the
source is a plain iterator standing for a Kafka/Kinesis consumer; real Postgres and the real
receiver over HTTP."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fixtures_marts import isolated_settings

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.signatures import WebhookSettings, signed_headers
from riskloop.simulator.webhooks import standard_body, stripe_body
from tests.conftest import free_port
from tests.test_webhooks import serve_in_thread

STRIPE_SECRET = "whsec_test_bridge_stripe"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"riskloop-bridge-test-key-32bytes").decode()
TYPES = {"stripe": "charge.succeeded", "standard": "payment.authorized"}  # the body's type per processor
CFG = WebhookSettings(secrets_stripe=STRIPE_SECRET, secrets_standard=STANDARD_SECRET)


@pytest.fixture(scope="module")
def warehouse(stack_env: dict[str, str]) -> Settings:
    return isolated_settings("riskloop_t_bridge")


def payment(i: int, processor: str) -> tuple[str, bytes]:
    ev = {"event_id": f"evt_bridge_{i}", "event_type": "payment.authorized",
          "occurred_at": datetime(2026, 3, 1, 12, 0, i, tzinfo=UTC), "payment_id": f"pay_bridge_{i}",
          "card_token": f"card_{i % 3}", "customer_id": "cust_1", "terminal_id": "T1", "amount_minor": 100 + i,
          "currency": "EUR", "dispute_id": None}
    return processor, stripe_body(ev) if processor == "stripe" else standard_body(ev)


def record(i: int, processor: str, received: datetime, *, signed: datetime | None = None,
           secret: str | None = None) -> Any:
    from riskloop.data.inbox_bridge import TopicRecord

    processor, body = payment(i, processor)
    secret = secret or (STRIPE_SECRET if processor == "stripe" else STANDARD_SECRET)
    headers = signed_headers(processor, body, secret, int((signed or received).timestamp()))
    return TopicRecord(processor, body, headers, received, position=i)


def inbox(settings: Settings) -> dict[tuple[str, str], tuple[Any, ...]]:
    with psycopg.connect(dsn(settings)) as conn:
        rows = conn.execute("select processor, event_id, event_type, signed_at, received_at, body "
                            "from raw.webhook_inbox").fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_bridge_writes_the_receivers_rows_once_and_commits_after_the_write(warehouse: Settings) -> None:
    from riskloop.data.inbox_bridge import InboxBridge

    received = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)  # a topic replayed hours later
    good = [record(i, "stripe" if i % 2 else "standard", received + timedelta(seconds=i)) for i in range(7)]
    bad_signature = record(7, "stripe", received, secret="whsec_someone_else")
    stale = record(8, "standard", received, signed=received - timedelta(hours=1))  # signed long before receipt
    listed = [*good[:3], bad_signature, None, *good[3:], good[0], stale]  # None: an empty poll; good[0] again
    # positions as a topic gives them: the record's offset
    source = [None if r is None else dataclasses.replace(r, position=at) for at, r in enumerate(listed)]
    committed: list[Any] = []
    with InboxBridge(warehouse, CFG, batch_max=3) as bridge:
        result = bridge.run(iter(source), commit=committed.append)
    assert (result.stored, result.duplicates) == (7, 1)
    assert [(p, reason) for p, reason, _ in result.rejected] == [(3, "bad_signature"), (10, "timestamp_too_old")]
    # each batch's last offset, committed once its rows are written: [0 1 2] [3] (then the empty poll) [5 6 7] [8 9 10]
    assert committed == [2, 3, 7, 10]
    rows = inbox(warehouse)
    assert len(rows) == 7
    for i, r in enumerate(good):
        event_type, signed_at, received_at, body = rows[(r.processor, f"evt_bridge_{i}")]
        assert (event_type, received_at, body) == (TYPES[r.processor], r.received_at, r.body.decode())
        assert signed_at == r.received_at  # signed when received, in this test

    # the whole topic again (a consumer group reset): nothing new
    with InboxBridge(warehouse, CFG) as bridge:
        again = bridge.run(iter(source))
    assert (again.stored, again.duplicates) == (0, 8)
    assert inbox(warehouse) == rows


def test_receiver_and_bridge_share_one_inbox_contract(warehouse: Settings) -> None:
    """One key for both writers: an event the receiver stored is a duplicate for the bridge and vice
    versa, and both store the same columns for it."""
    from riskloop.data.inbox_bridge import InboxBridge
    from serving.webhooks import create_webhook_app

    port = free_port()
    now = datetime.now(UTC).replace(microsecond=0)
    http_first, topic_first = record(20, "standard", now), record(21, "stripe", now)

    def post(r: Any) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{port}/webhooks/{r.processor}", content=r.body, headers=dict(r.headers))

    with InboxBridge(warehouse, CFG) as bridge:
        for _ in serve_in_thread(create_webhook_app(warehouse, CFG), port):
            assert post(http_first).json()["duplicate"] is False
            result = bridge.write([http_first, topic_first])
            assert (result.stored, result.duplicates, result.rejected) == (1, 1, [])
            assert post(topic_first).json()["duplicate"] is True
    rows = inbox(warehouse)
    for r in (http_first, topic_first):
        event_type, signed_at, _received, body = rows[(r.processor, f"evt_bridge_{r.position}")]
        assert (event_type, signed_at, body) == (TYPES[r.processor], now, r.body.decode())
