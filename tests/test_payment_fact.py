"""One payment fact from the landed files and the live webhooks: the same events sent live (real
receiver over HTTP → ``raw.webhook_inbox``), then landed in a file (``raw.webhook_events``), then both
again, give exactly one row per payment in ``marts.fct_transactions`` with the same values, the time
riskloop first received it, and one row per payment in the real-time window marts. Real Postgres, real
dbt; the stream's parser reads the inbox as ``int_inbox_payments`` does."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd
import psycopg
import pytest
from fixtures_marts import isolated_settings

from riskloop.core import windows
from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.signatures import WebhookSettings, signed_headers
from riskloop.simulator.webhooks import standard_body, stripe_body
from tests.conftest import free_port
from tests.fixtures_data import Payment, default_payments, make_tables, write_landing
from tests.test_webhooks import serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STRIPE_SECRET = "whsec_test_payment_fact_stripe"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"riskloop-paymentfact-test-key-32").decode()
FILE_FIRST = "pay_000003"  # landed in a file before it is sent live: the file's receipt is the first
FCT_COLUMNS = ("payment_id", "transaction_id", "customer_id", "terminal_id", "card_token", "tx_at", "amount",
               "amount_minor", "currency", "processor", "received_at", "is_weekend", "is_night", "is_fraud",
               "fraud_known_at", "label_source", "refunded")


@dataclass
class Env:
    settings: Settings
    url: str


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str]) -> Iterator[Env]:
    from serving.webhooks import create_webhook_app

    settings = isolated_settings("riskloop_t_payment_fact")
    cfg = WebhookSettings(secrets_stripe=STRIPE_SECRET, secrets_standard=STANDARD_SECRET)
    port = free_port()
    for _ in serve_in_thread(create_webhook_app(settings, cfg), port):
        yield Env(settings, f"http://127.0.0.1:{port}")


def post(env: Env, ev: dict[str, Any]) -> dict[str, Any]:
    processor = ev["processor"]
    body = stripe_body(ev) if processor == "stripe" else standard_body(ev)
    secret = STRIPE_SECRET if processor == "stripe" else STANDARD_SECRET
    resp = httpx.post(f"{env.url}/webhooks/{processor}", content=body,
                      headers=signed_headers(processor, body, secret, int(time.time())))
    assert resp.status_code == 200, resp.text
    return resp.json()


def query(settings: Settings, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn(settings)) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def fact(settings: Settings) -> dict[str, tuple]:
    rows = query(settings, f"select {', '.join(FCT_COLUMNS)} from marts.fct_transactions order by payment_id")
    return {r[0]: r for r in rows}


def fixture_tables() -> tuple[list[Payment], set[str], dict[str, pd.DataFrame]]:
    """Three days of payments, every other one from the Standard Webhooks sender, as raw tables."""
    payments = default_payments(days=3)
    tables = make_tables(payments)
    standard = {p.payment_id for i, p in enumerate(payments) if i % 2}
    events = tables["webhook_events"]
    events["processor"] = events["payment_id"].map(lambda p: "standard" if p in standard else "stripe")
    return payments, standard, tables


def test_live_then_file_then_both_is_one_row_per_payment_with_the_first_receipt(env: Env) -> None:
    from riskloop.data.ingest import load_landing, load_table
    from riskloop.data.transform import run_dbt
    from riskloop.features.stream import parse_payment

    settings = env.settings
    payments, standard, tables = fixture_tables()
    events = tables["webhook_events"]
    records = events.to_dict("records")
    live_first = [e for e in records if e["payment_id"] != FILE_FIRST]
    # every other raw table lands as usual; no webhook file yet
    load_landing(settings, write_landing({**tables, "webhook_events": events.iloc[0:0]},
                                         settings.home / "payment-fact-landing"))

    def land_file(rows: pd.DataFrame) -> None:
        load_table(settings, "webhook_events", rows)

    # 1. live only
    for ev in live_first:
        assert post(env, ev)["duplicate"] is False
    run_dbt(settings, ["build"])
    live = fact(settings)
    assert set(live) == {p.payment_id for p in payments} - {FILE_FIRST}
    received = dict(query(settings, "select body::jsonb #>> '{data,object,id}', received_at from raw.webhook_inbox "
                                    "where event_type = 'charge.succeeded' union all "
                                    "select body::jsonb #>> '{data,payment_id}', received_at from raw.webhook_inbox "
                                    "where event_type = 'payment.authorized'"))
    by_id = {p.payment_id: p for p in payments}
    for pid, row in live.items():
        p = by_id[pid]
        got = dict(zip(FCT_COLUMNS, row, strict=True))
        assert (got["customer_id"], got["terminal_id"], got["card_token"], got["tx_at"], got["amount_minor"],
                got["currency"], got["refunded"]) == (p.customer_id, p.terminal_id, f"tok_{p.customer_id}", p.tx_at,
                                                      p.amount_minor, p.currency, int(p.refunded)), pid
        assert got["processor"] == ("standard" if pid in standard else "stripe")
        assert got["received_at"] == received[pid]  # known since the live webhook
    fraud = [p.payment_id for p in payments if p.dispute and p.dispute[3]]
    assert all(live[pid][FCT_COLUMNS.index("is_fraud")] == 1 for pid in fraud if pid in live)

    # 2. the day's file: every event again, and one payment seen for the first time; the file's
    # receipt times are later than the live ones of the same events
    day_file = events.assign(received_at=pd.Timestamp.now(tz="UTC"))
    land_file(day_file)
    run_dbt(settings, ["build"])
    after_file = fact(settings)
    assert {k: v for k, v in after_file.items() if k != FILE_FIRST} == live
    file_received = query(settings, "select received_at from raw.webhook_events where event_id = %s",
                          (f"evt_{FILE_FIRST}_authorized",))[0][0]
    assert after_file[FILE_FIRST][FCT_COLUMNS.index("received_at")] == file_received

    # 3. both again (and the file-first payment live for the first time): nothing changes
    for ev in records:
        post(env, ev)
    land_file(day_file)
    run_dbt(settings, ["build"])
    assert fact(settings) == after_file
    assert len(after_file) == len(payments)

    # the incremental builds left what a rebuild from scratch gives
    run_dbt(settings, ["build", "--full-refresh"])
    assert fact(settings) == after_file

    # the window marts have one row per payment with a key, however often it came
    for entity in windows.ENTITIES:
        n = query(settings, f"select count(*) from marts.{windows.mart_name(entity)}")[0][0]
        assert n == len(payments), entity.name
    # the ledger mart has one row per payment of the fact
    assert query(settings, "select count(*) from marts.fct_payment_adjustments")[0][0] == len(payments)

    # the stream's parser reads the inbox exactly as int_inbox_payments does
    inbox = query(settings, "select processor, event_id, event_type, body from raw.webhook_inbox")
    parsed = {(p.processor, p.event_id, p.payment_id, p.terminal_id, p.card_token, p.customer_id, p.amount_minor,
               p.currency, p.occurred_at)
              for p in (parse_payment(*r) for r in inbox) if p is not None}
    batch = set(query(settings, "select processor, event_id, payment_id, terminal_id, card_token, customer_id, "
                                "amount_minor, currency, occurred_at from intermediate.int_inbox_payments"))
    assert parsed == batch and len(batch) == len(payments)


def test_a_live_payment_without_a_customer_is_no_row_and_blocks_nothing(env: Env) -> None:
    """A live body missing the customer (or with a payment id of the wrong JSON type) builds: the bad
    event is left out of the fact, every other payment is there."""
    from riskloop.data.transform import run_dbt

    settings = env.settings
    t = datetime.now(UTC).replace(microsecond=0)
    base = {"processor": "standard", "event_type": "payment.authorized", "occurred_at": t, "card_token": "tok_x",
            "terminal_id": "T1", "amount_minor": 100, "currency": "EUR", "dispute_id": None}
    post(env, {**base, "event_id": "evt_nocust", "payment_id": "pay_nocust", "customer_id": ""})
    post(env, {**base, "event_id": "evt_ok", "payment_id": "pay_okcust", "customer_id": "C9"})
    run_dbt(settings, ["build"])
    ids = {r[0] for r in query(settings, "select payment_id from marts.fct_transactions")}
    assert "pay_okcust" in ids and "pay_nocust" not in ids


def test_settlement_breaks_page_on_call_and_clean_files_do_not(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settlement files against the payment fact: clean files page no one; a file with
    amount mismatches and unknown payments pages on-call for its processor (runbook linked), through
    ``riskloop check settlements``; a clean file after it resolves the incident."""
    import json

    from pydantic import SecretStr
    from sinks import http_sink
    from typer.testing import CliRunner

    from riskloop.cli import app
    from riskloop.core.alerts import process
    from riskloop.core.schema import SETTLEMENT_FILE_ROWS
    from riskloop.data.ingest import load_landing, load_table
    from riskloop.data.transform import run_dbt
    from riskloop.monitoring.reconciliation import evaluate

    load_landing(env.settings, write_landing(fixture_tables()[2], env.settings.home / "settlement-landing"))
    run_dbt(env.settings, ["build"])
    settings = env.settings.model_copy(update={
        "alert_raise_after": 1, "alert_clear_after": 1, "settlement_break_files": 1,
        "settlement_break_min_lines": 3, "settlement_break_rate": 0.2})
    captures = query(settings, "select payment_id, processor, captured_amount_minor, captured_currency "
                               "from intermediate.int_payments where captured_at is not null order by payment_id")
    assert len(captures) >= 6

    def land(day: int, processor: str, lines: list[tuple[str, int, str]]) -> None:
        at = pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(days=day)
        frame = pd.DataFrame([{
            "source_file": f"settlements/{processor}/2024-03-{day:02d}.csv", "line_no": i + 1,
            "arrived_at": pd.Timestamp.now(tz="UTC"), "processor": processor, "payout_id": f"po_{processor}_{day}",
            "payment_id": pid, "amount_minor": amount, "fee_minor": 25, "currency": currency,
            "settled_at": at} for i, (pid, amount, currency) in enumerate(lines)], columns=SETTLEMENT_FILE_ROWS.column_names)
        load_table(settings, SETTLEMENT_FILE_ROWS, frame)

    def build_and_check(http) -> tuple[dict, list]:
        run_dbt(settings, ["build", "--select", "int_settlement_reconciliation", "settlement_reconciliation"])
        checks = {c.key: c for c in evaluate(settings)}
        sent = process(settings.model_copy(update={"alert_slack_webhook_url": SecretStr(http.url("/slack"))}),
                       checks.values())
        return checks, sent

    matched = {proc: [(pid, amount, cur) for pid, p, amount, cur in captures if p == proc]
               for proc in ("stripe", "standard")}
    with http_sink() as http:
        for proc, lines in matched.items():
            land(2, proc, lines)
        checks, sent = build_and_check(http)
        assert {k: c.breached for k, c in checks.items()} == {"stripe": False, "standard": False}
        assert sent == [] and http.requests == []

        # the next stripe file: two amounts off by a cent, two payments riskloop never received
        broken = [(pid, amount + (1 if i < 2 else 0), cur) for i, (pid, amount, cur) in enumerate(matched["stripe"])]
        land(3, "stripe", broken + [("pay_never_seen_1", 500, "EUR"), ("pay_never_seen_2", 700, "EUR")])
        checks, sent = build_and_check(http)
        stripe = checks["stripe"]
        assert stripe.breached is True and checks["standard"].breached is False
        assert (stripe.details["amount_mismatch"], stripe.details["unknown_payment"], stripe.details["not_captured"],
                stripe.details["lines"]) == (2, 2, 0, len(broken) + 2)
        assert [(a.kind, a.key, a.status) for a in sent] == [("settlement_breaks", "stripe", "firing")]
        assert len(http.bodies("/slack")) == 1 and b"settlement_breaks.md" in http.bodies("/slack")[0]

        # a clean file resolves it; the command line runs the same check
        land(4, "stripe", matched["stripe"])
        run_dbt(settings, ["build", "--select", "int_settlement_reconciliation", "settlement_reconciliation"])
        for k, v in {"RISKLOOP_DATABASE_URL": settings.database_url, "RISKLOOP_ALERT_CLEAR_AFTER": "1",
                     "RISKLOOP_SETTLEMENT_BREAK_FILES": "1", "RISKLOOP_SETTLEMENT_BREAK_MIN_LINES": "3",
                     "RISKLOOP_SETTLEMENT_BREAK_RATE": "0.2", "RISKLOOP_ALERT_SLACK_WEBHOOK_URL": http.url("/slack")}.items():
            monkeypatch.setenv(k, str(v))
        result = CliRunner().invoke(app, ["check", "settlements"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert {c["key"]: c["breached"] for c in out["checks"]} == {"stripe": False, "standard": False}
        assert [(a["key"], a["status"]) for a in out["alerts"]] == [("stripe", "resolved")]
