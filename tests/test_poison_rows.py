"""Poison rows never block: text Postgres cannot store (a NUL, a lone surrogate) is a 422 at the
scoring and case edges, and a row the decision-log writer still cannot write is set aside in
``serving.decision_log_dead_letters`` while the rest of its batch and every later row are written;
``/readyz``, ``/metrics`` and the tripwires say so (real Postgres, a warehouse of the module's own
so its dead letters page no other module's checks)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from riskloop.core.config import Settings
from riskloop.core.db import dsn

SCORER, ANALYST = "pr-scorer-key-000000000", "pr-analyst-key-00000000"


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def poison_settings(stack_env: dict[str, str]) -> Settings:
    from fixtures_marts import isolated_settings

    return isolated_settings("riskloop_t_poison")


@pytest.fixture()
def client(poison_settings: Settings) -> Iterator[TestClient]:
    from serving.app import create_app
    from serving.config import ServingSettings

    s = poison_settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    with TestClient(create_app(s, ServingSettings(api_keys=f"{SCORER}:scorer,{ANALYST}:analyst",
                                                  log_linger_s=0.0))) as c:
        yield c


def _body(customer: str) -> dict[str, Any]:
    return {"card_token": "tok_pr", "customer_id": customer, "terminal_id": "T1", "amount_minor": 1_000,
            "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00"}


def _logged(settings: Settings, ids: list[str]) -> int:
    with psycopg.connect(dsn(settings)) as conn:
        return conn.execute("select count(*) from serving.decision_log where decision_id = any(%s::uuid[])",
                            (ids,)).fetchone()[0]


def test_unstorable_text_is_422_and_every_later_decision_reaches_the_log(client: TestClient,
                                                                         poison_settings: Settings) -> None:
    nul = b'{"card_token": "tok_pr", "customer_id": "C-\\u0000", "terminal_id": "T1", "amount_minor": 1000, ' \
          b'"currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00"}'
    r = client.post("/v1/score/fraud", content=nul, headers={**_h(SCORER), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "customer_id" in r.text and "NUL" in r.text
    lone = nul.replace(b"\\u0000", b"\\ud800")
    r = client.post("/v1/score/fraud", content=lone, headers={**_h(SCORER), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert client.app.state.writer.depth() == 0

    ids = []
    for i in range(40):
        r = client.post("/v1/score/fraud", json=_body(f"C-pr-{i}"), headers=_h(SCORER))
        assert r.status_code == 200, r.text
        ids.append(r.json()["decision_id"])
    deadline = time.monotonic() + 30
    while _logged(poison_settings, ids) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _logged(poison_settings, ids) == 40

    ready = client.get("/readyz").json()
    assert ready["checks"]["writer"] is True and ready["checks"]["decision_log_dead_letters"] == 0
    assert "riskloop_decision_log_dead_letters_total 0.0" in client.get("/metrics").text


def test_credit_and_case_text_postgres_cannot_store_is_422(client: TestClient) -> None:
    r = client.post("/v1/score/credit", json={"application_id": "app-\x00"}, headers=_h(SCORER))
    assert r.status_code == 422 and "application_id" in r.text, r.text
    r = client.post(f"/v1/cases/{uuid.uuid4()}/note", json={"text": "seen \x00 twice"}, headers=_h(ANALYST))
    assert r.status_code == 422 and "text" in r.text, r.text
    r = client.post(f"/v1/cases/{uuid.uuid4()}/close", json={"disposition": "legitimate", "reason": "ok\x00"},
                    headers=_h(ANALYST))
    assert r.status_code == 422 and "reason" in r.text, r.text


def _row(customer: str, request_id: str = "r") -> dict[str, Any]:
    return {"decision_id": uuid.uuid4(), "request_id": request_id, "decided_at": datetime.now(UTC), "model_name": "m",
            "model_version": "1", "model_alias": "champion", "score": 0.1, "decision": "allow", "reasons": [],
            "rules": [], "features": {}, "feature_timestamps": {}, "request": _body(customer), "latency_ms": 1.0,
            "degraded": False, "product": "fraud", "policy_version": "fraud-v1", "signals": {}}


def test_a_row_the_writer_cannot_write_is_dead_lettered_and_its_batch_commits(poison_settings: Settings) -> None:
    """Rows built past the schema (as a new producer could): one whose request jsonb holds a NUL,
    one whose text column does, one with a lone surrogate the JSON encoder refuses. Before, the
    batch was retried forever and nothing after it was written."""
    from riskloop.core.alerts import KINDS, process
    from riskloop.monitoring.tripwires import evaluate
    from serving.decision_log import DecisionLogWriter, LogRefused

    good = [_row(f"C-ok-{i}") for i in range(5)]
    bad = [_row("C-\x00-jsonb"), _row("C-text", request_id="r-\x00"), _row("C-\ud800")]
    dead_counts: list[int] = []
    writer = DecisionLogWriter(dsn(poison_settings), maxsize=100, batch_size=100, enqueue_timeout_s=1.0,
                               on_dead_letter=dead_counts.append)
    # queued before the thread starts: one batch
    futures = {id(r): writer.submit(r) for r in [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]}
    writer.start()
    for r in good[:4]:
        assert futures[id(r)].result(timeout=30) is None  # committed: its request may be answered
    for r in bad:  # set aside, not logged: its request is refused, never answered 200
        with pytest.raises(LogRefused):
            futures[id(r)].result(timeout=30)
    writer.submit(good[4]).result(timeout=30)  # and the writer goes on
    writer.close(30)
    assert writer.dead_lettered == 3 and sum(dead_counts) == 3
    assert _logged(poison_settings, [str(r["decision_id"]) for r in good]) == 5
    assert _logged(poison_settings, [str(r["decision_id"]) for r in bad]) == 0
    with psycopg.connect(dsn(poison_settings)) as conn:
        dead = {d: (e, j) for d, e, j in conn.execute(
            "select decision_id, error, row_json from serving.decision_log_dead_letters where decision_id = any(%s)",
            ([str(r["decision_id"]) for r in bad],)).fetchall()}
    assert set(dead) == {str(r["decision_id"]) for r in bad}
    error, row_json = dead[str(bad[0]["decision_id"])]
    assert "\\u0000" in error or "NUL" in error or "0x00" in error, error
    assert json.loads(row_json)["request"]["customer_id"] == "C-\x00-jsonb"  # the row, escaped, is all there

    # on-call is paged: the tripwire sees the recent dead letters, and a window without any is clean
    settings = poison_settings.model_copy(update={"alert_raise_after": 1})
    assert "decision_log_dead_letter" in KINDS
    checks = {(c.kind, c.key): c for c in evaluate(settings)}
    check = checks[("decision_log_dead_letter", "decision_log")]
    assert check.breached is True and check.details["n_recent"] == 3
    [alert] = process(settings, [check])
    assert (alert.kind, alert.status) == ("decision_log_dead_letter", "firing")
    assert alert.runbook_url.endswith("decision_log_dead_letter.md")
    later = {(c.kind, c.key): c for c in evaluate(settings, now=datetime.now(UTC) + timedelta(days=2))}
    assert later[("decision_log_dead_letter", "decision_log")].breached is False


def test_one_check_names_where_the_text_is() -> None:
    from riskloop.core.signatures import Rejection
    from riskloop.core.storable import escape_unstorable, find_unstorable
    from riskloop.data.inbox import inbox_event
    from riskloop.features.stream import parse_payment

    assert find_unstorable({"a": {"b": ["ok", "x\x00"]}}) == "a.b[1]: contains a NUL character (\\u0000), which " \
                                                              "Postgres cannot store"
    assert "lone surrogate" in find_unstorable({"k\udc00": 1})
    assert find_unstorable({"a": ["ok", 1, None, {"é": "ü"}]}) is None
    assert escape_unstorable("a\x00b\ud800") == "a\\u0000b\\ud800"
    # the one rule of the inbox, shared by the receiver and the topic bridge
    with pytest.raises(Rejection) as refused:
        inbox_event("standard", b'{"type": "payment.authorized", "data": {"customer_id": "c\\u0000"}}', "msg_1", None)
    assert (refused.value.status, refused.value.reason) == (422, "unstorable_text")
    # a row stored before the receiver refused such text is no payment for the stream consumer
    body = ('{"type": "payment.authorized", "timestamp": "2026-01-01T00:00:00Z", '
            '"data": {"payment_id": "p1", "amount_minor": 5, "customer_id": "c%s"}}')
    assert parse_payment("standard", "e1", "payment.authorized", body % "\\u0000") is None
    assert parse_payment("standard", "e1", "payment.authorized", body % "").customer_id == "c"
