"""Card numbers: the tokenising edges (webhooks, score API, ingest) on the real stack, and the
simulator's column-wise JSON writers against the row-by-row renderers they replaced."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from riskloop.core import pan
from riskloop.core.db import dsn
from riskloop.core.signatures import sign_standard
from tests.test_webhooks import STANDARD_SECRET, Receiver, receiver  # noqa: F401 - the fixture

VISA = "4111 1111 1111 1111"
AMEX = "378282246310005"
BAD = "4111111111111112"  # one digit off: fails Luhn
KEY = pan.PanTokenizer(b"k" * 32)


def test_luhn_brand_and_tokens() -> None:
    assert pan.normalise("4111-1111-1111-1111") == "4111111111111111"
    assert pan.brand("4111111111111111") == "visa" and pan.brand(AMEX) == "amex"
    assert pan.brand("5555555555554444") == "mastercard" and pan.brand("2223003122003222") == "mastercard"
    assert pan.brand("1700000000000") is None  # epoch milliseconds: no scheme starts with 1
    for bad in (BAD, "4111", "41111111111111111111", "4111x11111111111", 4.5, None):
        with pytest.raises(pan.InvalidPan):
            pan.normalise(bad)
    ref = KEY.tokenize(VISA)
    assert ref == KEY.tokenize("4111111111111111")  # same card, same token: features can group by it
    assert (ref.bin, ref.last4, ref.brand) == ("411111", "1111", "visa")
    assert ref.token.startswith("pant_") and len(ref.token) == 5 + 64 and "4111111111111111" not in ref.token
    assert pan.PanTokenizer(b"o" * 32).tokenize(VISA).token != ref.token  # keyed
    assert "kkkk" not in repr(KEY)
    with pytest.raises(pan.PanKeyMissing):
        pan.PanTokenizer(b"short")


def test_scrub_json_tokenises_and_drops_sensitive_fields() -> None:
    doc = {"type": "payment.authorized", "data": {"amount": 5, "card": {"number": VISA, "cvc": "123", "exp_month": 1},
                                                  "track2": ";4111111111111111=2512?", "PIN": "1234"},
           "items": [{"pan": AMEX}], "number": "not a card: the key only counts inside a card object"}
    out, changed = pan.scrub(doc, KEY)
    assert changed == 5
    text = json.dumps(out)
    assert "4111111111111111" not in text and "378282246310005" not in text and "123" not in text
    assert out["data"]["card"] == {"exp_month": 1, "pan_token": KEY.tokenize(VISA).token, "bin": "411111",
                                   "last4": "1111"}
    assert out["items"] == [{"pan_token": KEY.tokenize(AMEX).token, "bin": "378282", "last4": "0005"}]
    assert "track2" not in out["data"] and "PIN" not in out["data"] and out["number"] == doc["number"]
    assert pan.scrub({"a": 1}, KEY) == ({"a": 1}, 0)
    with pytest.raises(pan.InvalidPan):
        pan.scrub({"card": {"number": BAD}}, KEY)
    with pytest.raises(pan.PanKeyMissing):
        pan.scrub({"card": {"number": VISA}}, None)


def test_local_key_is_generated_once_outside_the_database(settings) -> None:
    key_path = pan.key_file(settings)
    a, b = pan.tokenizer(settings), pan.tokenizer(settings)
    assert a.tokenize(VISA) == b.tokenize(VISA) and key_path.stat().st_mode & 0o077 == 0
    configured = settings.model_copy(update={"pan_token_key": SecretStr("c" * 32)})
    assert pan.tokenizer(configured).tokenize(VISA).token == pan.PanTokenizer(b"c" * 32).tokenize(VISA).token
    remote = settings.model_copy(update={"database_url": "postgresql://u@db.example:5432/riskloop"})
    with pytest.raises(pan.PanKeyMissing, match="RISKLOOP_PAN_TOKEN_KEY"):
        pan.tokenizer(remote)


# --- webhooks: verified on the raw bytes, tokenised before storage ------------------------------

def _post_standard(r: Receiver, msg_id: str, body: dict) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = sign_standard(msg_id, raw, STANDARD_SECRET, int(r.clock.now))
    return httpx.post(r.url + "/webhooks/standard", content=raw, headers=headers)


def test_webhook_card_number_is_tokenised_before_it_is_stored(receiver: Receiver, settings) -> None:  # noqa: F811
    r = receiver
    body = {"type": "payment.authorized", "data": {"payment_id": "pay_9", "amount_minor": 100,
                                                   "card": {"number": VISA, "cvc": "987", "exp_year": 2031}}}
    resp = _post_standard(r, "msg_card", body)
    assert resp.status_code == 200, resp.text
    [row] = r.rows()
    stored = json.loads(row[5])
    assert stored["data"]["card"] == {"exp_year": 2031, "pan_token": pan.tokenizer(settings).tokenize(VISA).token,
                                      "bin": "411111", "last4": "1111"}
    # the token's random hex may spell "987" by chance: look for the CVV outside it
    assert "4111111111111111" not in row[5] and "987" not in row[5].replace(stored["data"]["card"]["pan_token"], "")

    invalid = {"type": "payment.authorized", "data": {"card": {"number": BAD, "cvc": "987"}}}
    resp = _post_standard(r, "msg_bad_card", invalid)
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_pan"
    assert BAD not in resp.text and r.count() == 1
    assert r.metric("riskloop_webhook_rejections_total", processor="standard", reason="invalid_pan") == 1


# --- score requests ---------------------------------------------------------------------------

def test_score_request_pan_is_tokenised_and_never_logged(settings) -> None:
    from serving.app import create_app
    from serving.config import ServingSettings

    key = "pan-test-admin-key-000000"
    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    body = {"card_token": "tok_pan", "customer_id": "C-pan", "terminal_id": "T-pan", "amount_minor": 1234,
            "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00"}
    request_id = f"pan-{uuid.uuid4().hex}"
    with TestClient(create_app(s, ServingSettings(api_keys=f"{key}:admin")),
                    headers={"Authorization": f"Bearer {key}"}) as c:
        ok = c.post("/v1/score/fraud", json={**body, "pan": VISA}, headers={"X-Request-ID": request_id})
        assert ok.status_code == 200, ok.text
        bad = c.post("/v1/score/fraud", json={**body, "pan": BAD}, headers={"X-Request-ID": request_id + "-bad"})
        assert bad.status_code == 422 and bad.json()["detail"]["error"] == "invalid_pan" and BAD not in bad.text
        # a request failing validation elsewhere does not echo the body (and its card number) back
        echo = c.post("/v1/score/fraud", json={**body, "pan": VISA, "currency": "XXX"})
        assert echo.status_code == 422 and "4111" not in echo.text and echo.json()["detail"][0]["loc"][-1] == "currency"
    with psycopg.connect(dsn(settings)) as conn:
        rows = conn.execute("select request_id, request::text from serving.decision_log where request_id like %s",
                            (request_id + "%",)).fetchall()
    assert [r[0] for r in rows] == [request_id]  # the invalid one was never logged
    logged = json.loads(rows[0][1])
    assert "pan" not in logged and "4111111111111111" not in rows[0][1]
    assert (logged["pan_token"], logged["card_bin"], logged["card_last4"]) == (
        pan.tokenizer(settings).tokenize(VISA).token, "411111", "1111")


# --- landed files -----------------------------------------------------------------------------

def test_ingest_tokenises_a_card_number_column_and_drops_cvv(settings) -> None:
    from riskloop.data.ingest import ContractError, load_table
    from tests.fixtures_data import make_tables, reset_warehouse

    reset_warehouse(settings)
    events = make_tables()["webhook_events"].drop(columns=["card_token", "card_bin", "card_last4"],
                                                   errors="ignore")
    cards = [VISA, AMEX, "5555-5555-5555-4444"]
    events = events.assign(card_number=[cards[i % 3] for i in range(len(events))], cvv="123")
    result = load_table(settings, "webhook_events", events)
    assert result.rows_inserted == len(events)
    tok = pan.tokenizer(settings)
    with psycopg.connect(dsn(settings)) as conn:
        got = conn.execute("select card_token, card_bin, card_last4 from raw.webhook_events order by event_id").fetchall()
        cols = [r[0] for r in conn.execute("select column_name from information_schema.columns "
                                           "where table_schema = 'raw' and table_name = 'webhook_events'")]
    expected = {(tok.tokenize(c).token, tok.tokenize(c).bin, tok.tokenize(c).last4) for c in cards}
    assert set(got) == expected and "cvv" not in cols and "card_number" not in cols

    bad = events.assign(card_number=[BAD] + list(events["card_number"].iloc[1:]),
                        event_id=events["event_id"] + "-b")
    with pytest.raises(ContractError, match="not valid card numbers"):
        load_table(settings, "webhook_events", bad)
    with psycopg.connect(dsn(settings)) as conn:
        assert conn.execute("select count(*) from raw.webhook_events").fetchone()[0] == len(events)


# --- the simulator's card data and its column-wise writers -----------------------------------

def test_simulated_cards_are_valid_and_webhook_and_request_files_match_row_rendering(tmp_path: Path) -> None:
    from riskloop import simulator
    from riskloop.simulator.cards import pans_for
    from riskloop.simulator.score_requests import reference_lines, write_score_requests
    from riskloop.simulator.webhooks import standard_body, stripe_body, with_pans, write_webhook_files

    cards = pans_for(pd.Series(range(500)).to_numpy())
    assert all(pan.normalise(c) == c and pan.brand(c) for c in cards)
    assert len(set(cards)) == 500 and {pan.brand(c) for c in cards} == {"visa", "mastercard", "amex"}

    sim = simulator.simulate(days=3, customers=40, seed=11)
    events = sim.tables["webhook_events"]
    # awkward values the column-wise JSON must escape exactly like json.dumps
    events = events.copy()
    events.loc[events.index[0], "terminal_id"] = 'T"q\\u\n\x01é'
    events.loc[events.index[1], "occurred_at"] += pd.Timedelta(microseconds=123456)
    events.loc[events.index[2], "occurred_at"] += pd.Timedelta(nanoseconds=7)
    counts = write_webhook_files(events, tmp_path)
    frame = with_pans(events.sort_values(["received_at", "event_id"], kind="stable"))
    for scheme, render in (("stripe", stripe_body), ("standard", standard_body)):
        expected = b"".join(render(rec) + b"\n" for rec in frame[frame["processor"] == scheme].to_dict("records"))
        assert (tmp_path / "webhooks" / f"{scheme}.jsonl").read_bytes() == expected
        assert counts[scheme] == expected.count(b"\n") > 0
    standard = [json.loads(line) for line in (tmp_path / "webhooks" / "standard.jsonl").read_text().splitlines()]
    authorised = [b for b in standard if b["type"] == "payment.authorized"]
    assert authorised and all(pan.normalise(b["data"]["card"]["number"]) for b in authorised)

    path = write_score_requests(events, tmp_path)
    assert path.read_text().splitlines() == reference_lines(events)
    bodies = [json.loads(line) for line in path.read_text().splitlines()]
    assert any("pan" in b for b in bodies) and any("pan" not in b for b in bodies)
    assert pa.array([b["timestamp"] for b in bodies]).null_count == 0
