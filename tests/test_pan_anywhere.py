"""Card numbers under any name: webhook bodies, score requests, landed and batch files are scanned
for Luhn-valid numbers in a scheme's range whatever the field, and tokenised; the landing keeps no
clear number after a load, and ``riskloop audit pan`` looks there by default."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from riskloop.core import pan
from riskloop.core.db import dsn
from riskloop.core.subject_keys import reveal
from riskloop.data.inbox import inbox_event
from riskloop.ops.audit import audit_pan, default_paths, scan_file
from tests.test_pan import _post_standard
from tests.test_webhooks import Receiver, receiver  # noqa: F401 - the fixture

VISA, VISA_DIGITS = "4111 1111 1111 1111", "4111111111111111"
MC = "5555-5555-5555-4444"
KEY = pan.PanTokenizer(b"k" * 32)


def _clear(text: str) -> bool:
    """True if ``text`` holds a card number in clear (the audit's own detector)."""
    return bool(list(pan.find_pans(text)))


# --- the one detector, on free text and JSON ------------------------------------------------------

def test_free_text_numbers_are_tokenised_whatever_the_name() -> None:
    text, n = pan.tokenize_text(f"card {VISA} and {MC}; order 1700000000000", KEY)
    assert n == 2 and not _clear(text) and "1700000000000" in text
    assert KEY.tokenize(VISA).token in text and KEY.tokenize(MC).token in text
    assert pan.tokenize_text("nothing here 12345", None) == ("nothing here 12345", 0)  # no key needed when clean
    doc = {"type": "x", "card_no": VISA_DIGITS, "metadata": {"note": f"card {VISA}"}, "n": int(VISA_DIGITS),
           "ts": 1700000000000, "ids": ["pay_4111111111111111"]}
    out, changed = pan.scrub(doc, KEY)
    assert changed == 3 and not _clear(json.dumps(out))
    assert out["card_no"] == out["n"] == KEY.tokenize(VISA).token and out["ts"] == 1700000000000
    assert out["ids"] == doc["ids"]  # glued to a word: an id, not a card number
    assert pan.tokenize_fields({"device_id": VISA_DIGITS, "customer_id": "C1"}, KEY) == {
        "device_id": KEY.tokenize(VISA).token}


def test_inbox_event_tokenises_unknown_fields_for_receiver_and_bridge() -> None:
    body = json.dumps({"type": "payment.authorized", "card_no": VISA_DIGITS,
                       "metadata": {"note": f"card {VISA}"}}).encode()
    _, _, stored = inbox_event("standard", body, "msg_1", KEY)
    assert not _clear(stored) and json.loads(stored)["card_no"] == KEY.tokenize(VISA).token
    # a digit escaped in JSON is still a digit
    escaped = b'{"type": "x", "note": "\\u0034111111111111111"}'
    assert not _clear(inbox_event("standard", escaped, "msg_2", KEY)[2])
    plain = b'{"type": "x", "n": 12}'
    assert inbox_event("standard", plain, "msg_3", None)[2] == plain.decode()  # untouched, no key needed


def test_signed_webhook_with_card_number_under_any_name(receiver: Receiver, settings) -> None:  # noqa: F811
    r = receiver
    resp = _post_standard(r, "msg_card_no", {"type": "payment.authorized", "data": {"card_no": VISA_DIGITS}})
    assert resp.status_code == 200, resp.text
    resp = _post_standard(r, "msg_meta", {"type": "payment.authorized",
                                          "data": {"metadata": {"note": f"card {VISA}"}}})
    assert resp.status_code == 200, resp.text
    rows = {row[1]: row[5] for row in r.rows()}
    token = pan.tokenizer(settings).tokenize(VISA).token
    assert json.loads(rows["msg_card_no"])["data"]["card_no"] == token
    assert json.loads(rows["msg_meta"])["data"]["metadata"]["note"] == f"card {token}"
    assert not any(_clear(body) for body in rows.values())


def test_score_request_with_card_number_in_device_id(settings) -> None:
    from serving.app import create_app
    from serving.config import ServingSettings

    key = "pan-anywhere-admin-key-0000"
    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    body = {"card_token": "tok_pan", "customer_id": "C-pan", "terminal_id": "T-pan", "amount_minor": 1234,
            "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00", "device_id": VISA}
    request_id = f"pan-anywhere-{uuid.uuid4().hex}"
    with TestClient(create_app(s, ServingSettings(api_keys=f"{key}:admin")),
                    headers={"Authorization": f"Bearer {key}"}) as c:
        ok = c.post("/v1/score/fraud", json=body, headers={"X-Request-ID": request_id})
        assert ok.status_code == 200, ok.text
        assert not _clear(ok.text)
    with psycopg.connect(dsn(settings)) as conn:
        [(logged,)] = conn.execute("select request::text from serving.decision_log where request_id = %s",
                                   (request_id,)).fetchall()
        # the device is a personal field, sealed under the customer's key: the token is inside
        (revealed,) = reveal(conn, [json.loads(logged)], settings)
    assert not _clear(logged) and VISA_DIGITS not in logged
    assert revealed["device_id"] == pan.tokenizer(settings).tokenize(VISA).token


# --- landed files -------------------------------------------------------------------------------

def test_landed_file_with_a_card_number_in_an_unexpected_column(settings, tmp_path: Path) -> None:
    from riskloop.data.ingest import load_landing
    from tests.fixtures_data import make_tables, reset_warehouse, write_landing

    reset_warehouse(settings)
    tables = make_tables()
    events = tables["webhook_events"]
    events.loc[events.index[0], "terminal_id"] = f"T {VISA}"
    landing = write_landing(tables, tmp_path / "landing")
    (landing / "webhooks").mkdir()
    (landing / "webhooks" / "standard.jsonl").write_text(
        json.dumps({"type": "payment.authorized", "data": {"card": {"number": VISA_DIGITS}}}) + "\n"
        + json.dumps({"type": "payment.authorized", "note": f"card {MC}"}) + "\n" + '{"type": "x"}\n')
    (landing / "score_requests.jsonl").write_text(json.dumps({"card_token": "t", "pan": MC}) + "\n")
    planted = audit_pan(settings, [landing], database=False)
    assert {f.location for f in planted.findings} >= {str(landing / "webhook_events.parquet"),
                                                      str(landing / "webhooks" / "standard.jsonl"),
                                                      str(landing / "score_requests.jsonl")}

    load_landing(settings, landing)
    tok = pan.tokenizer(settings)
    with psycopg.connect(dsn(settings)) as conn:
        stored = conn.execute("select terminal_id from raw.webhook_events where event_id = %s",
                              (events["event_id"].iloc[0],)).fetchone()[0]
    assert stored == f"T {tok.tokenize(VISA).token}"
    # nothing left in clear on disk, and the files are still what their readers expect
    after = audit_pan(settings, [landing], database=False)
    assert not [f for f in after.findings if f.location.startswith(str(landing))], after.findings
    assert pq.read_table(landing / "webhook_events.parquet").num_rows == len(events)
    [authorised, noted, plain] = [json.loads(x) for x in (landing / "webhooks" / "standard.jsonl").read_text().splitlines()]
    assert authorised["data"]["card"]["pan_token"] == tok.tokenize(VISA).token and plain == {"type": "x"}
    assert noted["note"] == f"card {tok.tokenize(MC).token}"
    assert json.loads((landing / "score_requests.jsonl").read_text())["pan_token"] == tok.tokenize(MC).token
    # a second load of the rewritten files changes nothing
    assert all(r.rows_inserted == r.rows_updated == 0 for r in load_landing(settings, landing))


def test_landing_scrub_reads_only_new_or_changed_files(settings, tmp_path: Path) -> None:
    from riskloop.data.landing_scrub import scrub_landing

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.jsonl").write_text(json.dumps({"pan": MC}) + "\n")
    (landing / "b.csv").write_text("id,amount\n1,2\n")
    first = scrub_landing(settings, landing)
    assert first.files_scanned == 2 and list(first.rewritten) == [str(landing / "a.jsonl")]
    # a rewritten file is read once more (its new version), then neither is
    assert scrub_landing(settings, landing).files_scanned == 1
    again = scrub_landing(settings, landing)
    assert again.files_scanned == 0 and again.files_unchanged == 2
    # a changed file and a new one are read, and their numbers tokenised
    (landing / "b.csv").write_text(f"id,note\n1,card {VISA}\n")
    (landing / "c.jsonl").write_text(json.dumps({"note": f"card {MC}"}) + "\n")
    changed = scrub_landing(settings, landing)
    assert changed.files_scanned == 2 and changed.files_unchanged == 1
    assert not _clear((landing / "b.csv").read_text()) and not _clear((landing / "c.jsonl").read_text())


def test_audit_covers_landing_and_batch_by_default(settings) -> None:
    paths = default_paths(settings)
    assert settings.landing in paths and Path(settings.batch_store) in paths
    planted = settings.landing / "planted" / "drop.csv"
    parquet = settings.landing / "planted" / "drop.parquet"
    planted.parent.mkdir(parents=True, exist_ok=True)
    try:
        planted.write_text(f"id,note\n1,card {VISA}\n")
        pq.write_table(pa.table({"note": ["x", f"card {MC}"]}), parquet)
        report = audit_pan(settings, database=False)
        found = {f.location: f for f in report.findings}
        assert found[str(planted)].examples == ["411111******1111 (visa) at line 2"]
        assert found[str(parquet)].examples == ["555555******4444 (mastercard) at column note row 2"]
        assert str(settings.landing) in report.locations
    finally:
        planted.unlink(missing_ok=True)
        parquet.unlink(missing_ok=True)


def test_batch_file_with_a_card_number_is_loaded_and_archived_tokenised(settings, tmp_path: Path) -> None:
    from riskloop import simulator
    from riskloop.core.objectstore import open_store
    from riskloop.data.batch_files import load_batch_files
    from riskloop.simulator.batch import batch_files
    from tests.test_batch_files import _empty_tables, _replace_field

    local = settings.model_copy(update={"batch_url": str(tmp_path / "batch")})
    _empty_tables(settings)
    everything = batch_files(simulator.simulate(days=12, customers=40, seed=3).tables)
    rel = sorted(k for k in everything if k.startswith("settlements/"))[0]
    header = everything[rel].split(b"\n", 1)[0].decode().split(",")
    column = next(c for c in header if c.endswith("_id"))
    data = _replace_field(everything[rel], 1, column, MC)
    store = open_store(local)
    store.put(f"incoming/{rel}", data)
    report = load_batch_files(local)
    assert report.to_dict()["inserted"] == data.count(b"\n") - 1
    archived = tmp_path / "batch" / "archive" / rel
    assert scan_file(archived)[0] is None and pan.tokenizer(settings).tokenize(MC).token.encode() in archived.read_bytes()
