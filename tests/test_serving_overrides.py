"""Reviewer overrides: their own append-only table, the decision log untouched (real stack).

A rules-only app (no model registered under its name) is enough: its decisions are logged like
any other, and overrides do not depend on how a decision was made.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from riskloop.core.db import dsn

SCORER, REVIEWER, ADMIN = "ov-scorer-key-000000000", "ov-reviewer-key-0000000", "ov-admin-key-00000000000"
KEYS = f"{SCORER}:scorer,{REVIEWER}:reviewer,{ADMIN}:admin"
BODY = {"card_token": "tok", "customer_id": "C1", "terminal_id": "T1", "amount_minor": 90_000,
        "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00"}


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def client(settings: Any) -> Iterator[TestClient]:
    from serving.app import create_app
    from serving.config import ServingSettings

    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    with TestClient(create_app(s, ServingSettings(api_keys=KEYS))) as c:
        yield c


def _decide(client: TestClient) -> str:
    r = client.post("/v1/score/fraud", json=BODY, headers=_h(SCORER))
    assert r.status_code == 200, r.text
    return r.json()["decision_id"]


def _log_row(settings: Any, decision_id: str) -> tuple:
    with psycopg.connect(dsn(settings)) as conn:
        return conn.execute("select decision, rules, reasons, score from serving.decision_log where decision_id = %s",
                            (decision_id,)).fetchone()


def test_override_recorded_and_shown(client: TestClient, settings: Any) -> None:
    decision_id = _decide(client)  # rules-only, 900.00 EUR: review
    r = client.post(f"/v1/decisions/{decision_id}/override", headers={**_h(REVIEWER), "X-Request-ID": "rv-1"},
                    json={"decision": "allow", "reason": "customer confirmed the purchase by phone"})
    assert r.status_code == 201, r.text
    ov = r.json()
    assert ov["previous_decision"] == "review" and ov["decision"] == "allow"
    assert ov["actor"].startswith("reviewer:") and REVIEWER not in ov["actor"]
    assert ov["request_id"] == "rv-1"
    second = client.post(f"/v1/decisions/{decision_id}/override", headers=_h(REVIEWER),
                         json={"decision": "deny", "reason": "chargeback filed after all"}).json()
    assert second["previous_decision"] == "allow"

    got = client.get(f"/v1/decisions/{decision_id}", headers=_h(REVIEWER)).json()
    assert got["decision"] == "review" and got["effective_decision"] == "deny" and got["persisted"] is True
    assert [o["decision"] for o in got["overrides"]] == ["allow", "deny"]
    # The decision log row is exactly what the system decided.
    after = _log_row(settings, decision_id)
    assert after[0] == "review" and after[1] == ["DEGRADED_AMOUNT_REVIEW"]
    # The override table is append-only in the database itself.
    with psycopg.connect(dsn(settings)) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("delete from serving.decision_overrides where decision_id = %s", (decision_id,))
    with psycopg.connect(dsn(settings)) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("update serving.decision_overrides set reason = 'x' where decision_id = %s", (decision_id,))


def test_override_needs_reviewer_and_a_reason(client: TestClient) -> None:
    decision_id = _decide(client)
    url = f"/v1/decisions/{decision_id}/override"
    ok = {"decision": "allow", "reason": "known customer"}
    assert client.post(url, json=ok).status_code == 401
    assert client.post(url, json=ok, headers=_h(SCORER)).status_code == 403
    assert client.post(url, json=ok, headers=_h(ADMIN)).status_code == 403  # four eyes: operators don't decide
    for bad in ({"decision": "allow"}, {"decision": "allow", "reason": "   "}, {"decision": "maybe", "reason": "x"},
                {"decision": "approve", "reason": "a credit outcome on a fraud decision"}):
        r = client.post(url, json=bad, headers=_h(REVIEWER))
        assert r.status_code == 422, (bad, r.text)
    assert client.post(f"/v1/decisions/{uuid.uuid4()}/override", json=ok, headers=_h(REVIEWER)).status_code == 404
    got = client.get(f"/v1/decisions/{decision_id}", headers=_h(REVIEWER)).json()
    assert got["overrides"] == [] and got["effective_decision"] == got["decision"]


def test_override_right_after_scoring_waits_for_the_writer(client: TestClient) -> None:
    decision_id = _decide(client)
    t0 = time.monotonic()
    r = client.post(f"/v1/decisions/{decision_id}/override", headers=_h(REVIEWER),
                    json={"decision": "deny", "reason": "confirmed fraud"})
    assert r.status_code == 201, r.text
    assert time.monotonic() - t0 < 2.5
