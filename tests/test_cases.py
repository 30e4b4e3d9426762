"""Cases: review decisions open and join cases, analysts work them through the API and the CLI,
step-up outcomes are recorded once, the queue's figures reach /metrics and the alerts, verdicts and
failed step-ups become dbt label signals (real stack).

A rules-only app (no model registered under its name) decides 900.00 EUR as ``review``
(DEGRADED_AMOUNT_REVIEW), which is all a case needs; the writer links the decision to its case in
the transaction that commits it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from riskloop.core.db import dsn
from riskloop.decisions import cases

SCORER, ANALYST, ANALYST_2 = "cs-scorer-key-000000000", "cs-analyst-key-00000000", "cs-analyst2-key-0000000"
REVIEWER, ADMIN = "cs-reviewer-key-0000000", "cs-admin-key-00000000000"
KEYS = f"{SCORER}:scorer,{ANALYST}:analyst,{ANALYST_2}:analyst,{REVIEWER}:reviewer,{ADMIN}:admin"


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def body(card: str, customer: str, amount_minor: int = 90_000, **extra: Any) -> dict[str, Any]:
    return {"card_token": card, "customer_id": customer, "terminal_id": "T1", "amount_minor": amount_minor,
            "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00", **extra}


@pytest.fixture()
def client(settings: Any) -> Iterator[TestClient]:
    from serving.app import create_app
    from serving.config import ServingSettings

    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}",
                                    "review_identities": {_fp(ANALYST): "ana", _fp(ANALYST_2): "bob"}})
    with TestClient(create_app(s, ServingSettings(api_keys=KEYS, log_linger_s=0.0))) as c:
        yield c


def _fp(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:12]


def score(client: TestClient, payload: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/score/fraud", json=payload, headers=_h(SCORER))
    assert r.status_code == 200, r.text
    return r.json()


def case_of(settings: Any, decision_id: str, timeout_s: float = 10.0) -> uuid.UUID:
    """The case the writer linked the decision to (it commits a moment after the answer)."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        while True:
            row = conn.execute("select case_id from cases.case_events where decision_id = %s "
                               "and kind = 'decision_added'", (decision_id,)).fetchone()
            if row is not None:
                return row[0]
            assert time.monotonic() < deadline, f"decision {decision_id} never got a case"
            time.sleep(0.05)


def score_card(case: dict[str, Any], decision_id: str) -> str:
    return next(d["request"]["card_token"] for d in case["decisions"] if d["decision_id"] == decision_id)


def events(settings: Any, case_id: Any) -> list[tuple]:
    with psycopg.connect(dsn(settings)) as conn:
        return conn.execute("select kind, actor, details from cases.case_events where case_id = %s order by seq",
                            (case_id,)).fetchall()


def test_review_decisions_open_and_join_one_case_per_card_or_customer(client: TestClient, settings: Any) -> None:
    card, customer, other = f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"
    first = score(client, body(card, customer))
    assert first["decision"] == "review"
    case_id = case_of(settings, first["decision_id"])
    same_customer = score(client, body(f"tok-{uuid.uuid4().hex[:8]}", customer, 120_000))
    same_card = score(client, body(card, other))
    assert case_of(settings, same_customer["decision_id"]) == case_id
    assert case_of(settings, same_card["decision_id"]) == case_id
    allowed = score(client, body(card, customer, 1_000))  # allowed: no case
    elsewhere = score(client, body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"))
    assert allowed["decision"] == "allow"
    assert case_of(settings, elsewhere["decision_id"]) != case_id

    got = client.get(f"/v1/cases/{case_id}", headers=_h(ANALYST)).json()
    assert got["status"] == "open" and got["source"] == "review" and got["n_decisions"] == 3
    assert got["amount_at_risk"] == pytest.approx(900 + 1200 + 900)
    assert got["priority"] == "P1"  # 3,000.00 at risk reaches P1's min_amount (1,000) after the second
    assert {d["decision_id"] for d in got["decisions"]} == {first["decision_id"], same_customer["decision_id"],
                                                           same_card["decision_id"]}
    assert got["decisions"][0]["rules"] == ["DEGRADED_AMOUNT_REVIEW"]
    assert got["other_cases"] == []
    # The timeline: the payments (parsed webhooks) of the case's cards and customers, newest first.
    ours, theirs = f"evt-{uuid.uuid4().hex[:8]}", f"evt-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn(settings)) as conn:
        for event_id, card_token, customer_id, minutes in ((ours, card, "C-elsewhere", 5), (theirs, "tok-x", "C-x", 1)):
            conn.execute("insert into realtime.payment_events (processor, event_id, card_token, customer_id, "
                         "amount_minor, occurred_at, currency) values ('stripe', %s, %s, %s, 4200, "
                         "now() - make_interval(mins => %s), 'EUR')", (event_id, card_token, customer_id, minutes))
    timeline = client.get(f"/v1/cases/{case_id}", headers=_h(ANALYST)).json()["timeline"]
    assert [(t["event_id"], t["amount_minor"], t["card_token"]) for t in timeline] == [(ours, 4200, card)]
    assert [e["kind"] for e in got["events"]] == ["opened", "decision_added", "decision_added", "decision_added"]
    # The row is what its events say: replaying every case's events rewrites the same rows.
    cols = ", ".join(cases.CASE_COLUMNS)
    with psycopg.connect(dsn(settings)) as conn:
        row, entities = cases.fold(cases.events_of(conn, case_id))
        assert (row["n_decisions"], row["priority"], row["status"]) == (3, "P1", "open")
        assert set(entities) == {f"card:{card}", f"customer:{customer}", f"customer:{other}",
                                 f"card:{score_card(got, same_customer['decision_id'])}"}
        before = conn.execute(f"select {cols} from cases.cases order by case_id").fetchall()
        held = conn.execute("select entity, case_id from cases.open_entities order by entity").fetchall()
        assert cases.rebuild(conn) >= 2
        assert conn.execute(f"select {cols} from cases.cases order by case_id").fetchall() == before
        assert conn.execute("select entity, case_id from cases.open_entities order by entity").fetchall() == held


def test_two_concurrent_claims_exactly_one_wins(client: TestClient, settings: Any) -> None:
    case_id = case_of(settings, score(client, body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"))
                      ["decision_id"])
    for _ in range(5):  # the same race, five times: one winner each time
        barrier = threading.Barrier(2)
        results: dict[str, Any] = {}

        def attempt(actor: str) -> None:
            with psycopg.connect(dsn(settings), autocommit=True) as conn:
                barrier.wait()
                try:
                    results[actor] = cases.claim(conn, case_id, actor)["assignee"]
                except cases.CaseConflict as exc:
                    results[actor] = exc

        threads = [threading.Thread(target=attempt, args=(a,)) for a in ("ana", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [a for a, r in results.items() if r == a]
        assert len(winners) == 1 and isinstance(results[{"ana", "bob"}.difference(winners).pop()], cases.CaseConflict)
        with psycopg.connect(dsn(settings), autocommit=True) as conn:
            cases.release(conn, case_id, winners[0])
    claims = [e for e in events(settings, case_id) if e[0] == "claimed"]
    assert len(claims) == 5


def test_analyst_works_a_case_through_the_api(client: TestClient, settings: Any) -> None:
    case_id = case_of(settings, score(client, body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"))
                      ["decision_id"])
    url = f"/v1/cases/{case_id}"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=_h(SCORER)).status_code == 403
    assert client.post(f"{url}/claim", headers=_h(ADMIN)).status_code == 403  # admin reads, never works a case
    assert client.get(url, headers=_h(ADMIN)).status_code == 200

    listed = client.get("/v1/cases", params={"sort": "age", "limit": 500}, headers=_h(ANALYST)).json()
    assert str(case_id) in {c["case_id"] for c in listed["cases"]} and listed["total"] >= 1
    page = client.get("/v1/cases", params={"limit": 1, "offset": 0}, headers=_h(ANALYST)).json()
    assert len(page["cases"]) == 1 and page["total"] == listed["total"]

    assert client.post(f"{url}/close", json={"disposition": "legitimate", "reason": "x"},
                       headers=_h(ANALYST)).status_code == 409  # claim first
    claimed = client.post(f"{url}/claim", headers=_h(ANALYST))
    assert claimed.status_code == 200 and claimed.json()["assignee"] == "ana" and claimed.json()["status"] == "in_review"
    second = client.post(f"{url}/claim", headers=_h(ANALYST_2))
    assert second.status_code == 409 and "ana" in second.json()["detail"]
    assert client.get("/v1/cases", params={"assignee": "ana"}, headers=_h(ANALYST)).json()["total"] >= 1
    assert client.post(f"{url}/note", json={"text": "called the customer"}, headers=_h(ANALYST)).json()["n_notes"] == 1
    assert client.post(f"{url}/close", json={"disposition": "fraud_confirmed", "reason": ""},
                       headers=_h(ANALYST)).status_code == 422  # a reason is required
    assert client.post(f"{url}/close", json={"disposition": "guilty", "reason": "x"},
                       headers=_h(ANALYST)).status_code == 422
    assert client.post(f"{url}/close", json={"disposition": "fraud_confirmed", "reason": "card reported stolen"},
                       headers=_h(ANALYST_2)).status_code == 409  # not bob's case
    closed = client.post(f"{url}/close", json={"disposition": "fraud_confirmed", "reason": "card reported stolen"},
                         headers=_h(ANALYST)).json()
    assert (closed["status"], closed["disposition"], closed["closed_by"]) == ("closed", "fraud_confirmed", "ana")
    assert client.post(f"{url}/claim", headers=_h(ANALYST)).status_code == 409
    assert client.get(f"/v1/cases/{uuid.uuid4()}", headers=_h(ANALYST)).status_code == 404

    kinds = [(k, a) for k, a, _ in events(settings, case_id)]
    assert kinds == [("opened", cases.SYSTEM), ("decision_added", cases.SYSTEM), ("claimed", "ana"),
                     ("noted", "ana"), ("closed", "ana")]
    with psycopg.connect(dsn(settings)) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("update cases.case_events set actor = 'x' where case_id = %s", (case_id,))
    with psycopg.connect(dsn(settings)) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("delete from cases.case_events where case_id = %s", (case_id,))
    # A new review decision of that customer opens a new case: the closed one stays closed, and is
    # shown in the new one's view with its verdict.
    assert client.get(url, headers=_h(ANALYST)).json()["status"] == "closed"
    customer = client.get(url, headers=_h(ANALYST)).json()["customer_id"]
    again = case_of(settings, score(client, body(f"tok-{uuid.uuid4().hex[:8]}", customer))["decision_id"])
    assert again != case_id
    other = client.get(f"/v1/cases/{again}", headers=_h(ANALYST)).json()["other_cases"]
    assert [(o["case_id"], o["disposition"]) for o in other] == [(str(case_id), "fraud_confirmed")]


def _step_up(settings: Any, customer: str) -> str:
    """A logged step_up decision (the rules-only policy never steps up on its own)."""
    decision_id = str(uuid.uuid4())
    with psycopg.connect(dsn(settings)) as conn:
        conn.execute(
            "insert into serving.decision_log (decision_id, request_id, decided_at, score, decision, request, "
            "product, policy_version) values (%s, 'r', now(), 0.4, 'step_up', %s, 'fraud', 'fraud-v1')",
            (decision_id, json.dumps(body(f"tok-{uuid.uuid4().hex[:8]}", customer, 30_000))))
    return decision_id


def test_step_up_outcome_is_idempotent_append_only_and_a_failure_opens_a_case(client: TestClient,
                                                                              settings: Any) -> None:
    passed, failed = _step_up(settings, f"C-{uuid.uuid4().hex[:8]}"), _step_up(settings, f"C-{uuid.uuid4().hex[:8]}")
    url = f"/v1/decisions/{passed}/outcome"
    assert client.post(url, json={"outcome": "passed"}, headers=_h(ANALYST)).status_code == 403
    r = client.post(url, json={"outcome": "passed", "occurred_at": "2024-03-30T02:16:00+00:00"}, headers=_h(SCORER))
    assert r.status_code == 201 and r.json()["outcome"] == "passed"
    again = client.post(url, json={"outcome": "passed"}, headers=_h(SCORER))
    assert again.status_code == 200 and again.json()["outcome_id"] == r.json()["outcome_id"]
    assert client.post(url, json={"outcome": "failed"}, headers=_h(SCORER)).status_code == 409
    assert client.post(url, json={"outcome": "maybe"}, headers=_h(SCORER)).status_code == 422
    assert client.post(f"/v1/decisions/{uuid.uuid4()}/outcome", json={"outcome": "passed"},
                       headers=_h(SCORER)).status_code == 404
    review = score(client, body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"))
    case_of(settings, review["decision_id"])
    assert client.post(f"/v1/decisions/{review['decision_id']}/outcome", json={"outcome": "failed"},
                       headers=_h(SCORER)).status_code == 409  # not a step_up
    with psycopg.connect(dsn(settings)) as conn:
        n_cases = conn.execute("select count(*) from cases.case_events where decision_id = %s", (passed,)).fetchone()[0]
    assert n_cases == 0  # a passed challenge opens nothing

    f = client.post(f"/v1/decisions/{failed}/outcome", json={"outcome": "failed"}, headers=_h(SCORER))
    assert f.status_code == 201
    case = client.get(f"/v1/cases/{case_of(settings, failed, 0)}", headers=_h(ANALYST)).json()
    assert case["source"] == "step_up_failed" and case["decisions"][0]["outcome"] == "failed"
    with psycopg.connect(dsn(settings)) as conn:
        stored = conn.execute("select outcome, occurred_at, recorded_at, actor from serving.decision_outcomes "
                              "where decision_id = %s", (passed,)).fetchone()
        assert stored[0] == "passed" and stored[1] == datetime(2024, 3, 30, 2, 16, tzinfo=UTC)
        assert stored[2] is not None and stored[3].startswith("scorer:")
        with pytest.raises(psycopg.Error, match="append-only"):
            conn.execute("update serving.decision_outcomes set outcome = 'failed' where decision_id = %s", (passed,))


def test_sync_links_what_the_writer_missed_and_chargebacks_of_allowed_payments(settings: Any) -> None:
    from riskloop.data.ingest import create_raw_tables

    customer = f"C-{uuid.uuid4().hex[:8]}"
    review_id, allowed_id, payment = str(uuid.uuid4()), str(uuid.uuid4()), f"pay-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn(settings)) as conn:  # written without the serving writer: no case yet
        for decision_id, decision, req in (
                (review_id, "review", body(f"tok-{uuid.uuid4().hex[:8]}", customer)),
                (allowed_id, "allow", body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}", 5_000,
                                           transaction_id=payment))):
            conn.execute("insert into serving.decision_log (decision_id, request_id, decided_at, score, decision, "
                         "request, product) values (%s, 'r', now(), 0.1, %s, %s, 'fraud')",
                         (decision_id, decision, json.dumps(req)))
        create_raw_tables(conn)  # the landed tables as ingest makes them (the contract's columns)
        batch = conn.execute("insert into raw.load_batches (table_name, rows_in) values ('dispute_outcomes', 1) "
                             "returning batch_id").fetchone()[0]
        conn.execute("insert into raw.dispute_outcomes (dispute_id, payment_id, opened_at, closed_at, status, "
                     "fraud_confirmed, reason_code, amount_minor, currency, _batch_id) values (%s, %s, "
                     "now() - interval '3 days', now(), 'lost', true, '10.4', 5000, 'EUR', %s)",
                     (f"d-{payment}", payment, batch))
    first = cases.sync(settings)
    assert first["review"] >= 1 and first["chargeback"] >= 1 and first["failed"] == 0
    assert case_of(settings, review_id, 0) != case_of(settings, allowed_id, 0)
    with psycopg.connect(dsn(settings)) as conn:
        assert conn.execute("select source from cases.cases where case_id = %s",
                            (case_of(settings, allowed_id, 0),)).fetchone()[0] == "chargeback"
    again = cases.sync(settings)
    assert again["review"] == 0 and again["chargeback"] == 0  # idempotent


def test_stats_and_metrics(client: TestClient, settings: Any) -> None:
    decision_id = str(uuid.uuid4())  # a scored review decision (the model said 0.8), linked by sync
    with psycopg.connect(dsn(settings)) as conn:
        conn.execute("insert into serving.decision_log (decision_id, request_id, decided_at, score, decision, request, "
                     "product) values (%s, 'r', now(), 0.8, 'review', %s, 'fraud')",
                     (decision_id, json.dumps(body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"))))
    cases.sync(settings)
    case_id = case_of(settings, decision_id, 0)
    client.post(f"/v1/cases/{case_id}/claim", headers=_h(ANALYST))
    client.post(f"/v1/cases/{case_id}/close", json={"disposition": "fraud_confirmed", "reason": "stolen card"},
                headers=_h(ANALYST))
    s = client.get("/v1/cases/stats", headers=_h(ADMIN)).json()
    assert s["closed"] >= 1 and s["dispositions"]["fraud_confirmed"] >= 1 and s["time_to_disposition_p50_s"] >= 0
    assert 0 < s["review_precision"] <= 1 and 0 < s["model_agreement"] <= 1
    assert s["closed_in_window"] >= 1 and s["opened_in_window"] >= 1
    text = client.get("/metrics").text
    for name in ("riskloop_cases_queue_depth", "riskloop_cases_oldest_open_age_seconds",
                 "riskloop_cases_time_to_disposition_seconds", "riskloop_cases_review_precision",
                 "riskloop_cases_model_agreement", "riskloop_cases_overdue", "riskloop_cases_closed"):
        assert name in text


def test_cli_lists_shows_claims_and_closes(client: TestClient, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from riskloop.cli import app

    case_id = str(case_of(settings, score(client, body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"))
                          ["decision_id"]))
    runner = CliRunner()
    listed = runner.invoke(app, ["cases", "list", "--json", "--limit", "500", "--sort", "age"])
    assert listed.exit_code == 0, listed.output
    assert case_id in {c["case_id"] for c in json.loads(listed.stdout)["cases"]}
    shown = runner.invoke(app, ["cases", "show", case_id, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["decisions"][0]["rules"] == ["DEGRADED_AMOUNT_REVIEW"]
    assert runner.invoke(app, ["cases", "claim", case_id, "--analyst", "carol"]).exit_code == 0
    taken = runner.invoke(app, ["cases", "claim", case_id, "--analyst", "dave"])
    assert taken.exit_code == 1 and "carol" in taken.output
    assert runner.invoke(app, ["cases", "note", case_id, "looks like a test purchase", "--analyst", "carol"]).exit_code == 0
    no_reason = runner.invoke(app, ["cases", "close", case_id, "--disposition", "legitimate", "--analyst", "carol"])
    assert no_reason.exit_code != 0
    done = runner.invoke(app, ["cases", "close", case_id, "--disposition", "inconclusive", "--reason",
                               "customer unreachable", "--analyst", "carol"])
    assert done.exit_code == 0, done.output
    assert [(k, a) for k, a, _ in events(settings, case_id)][-3:] == [("claimed", "carol"), ("noted", "carol"),
                                                                      ("closed", "carol")]
    stats = runner.invoke(app, ["cases", "stats"])
    assert stats.exit_code == 0 and "review precision" in stats.output


def test_case_alerts_fire_on_sla_breaches_and_a_growing_queue(client: TestClient, settings: Any) -> None:
    from datetime import timedelta

    from riskloop.core.alerts import process
    from riskloop.monitoring import case_checks

    case_of(settings, score(client, body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"))["decision_id"])
    later = datetime.now(UTC) + timedelta(hours=100)  # past every default SLA (72 h at most)
    s = settings.model_copy(update={"cases_sla_breach_max": 0, "cases_growth_min": 1, "cases_growth_window_hours": 200.0,
                                    "alert_raise_after": 1})
    sla, growth = case_checks.evaluate(s, now=later)
    assert sla.kind == "case_sla_breach" and sla.breached is True and sla.details["overdue"] >= 1
    assert growth.kind == "case_queue_growth" and growth.breached is True
    assert growth.details["opened"] > growth.details["closed"]
    quiet = case_checks.evaluate(s.model_copy(update={"cases_sla_breach_max": 10**6, "cases_growth_min": 10**6}), now=later)
    assert [c.breached for c in quiet] == [False, False]
    sent = process(s, [sla])
    assert sent and sent[0].status == "firing" and sent[0].runbook_url.endswith("case_sla_breach.md")
    assert process(s.model_copy(update={"alert_clear_after": 1}), quiet[:1])[0].status == "resolved"


LABEL_MODELS = "stg_case_events stg_decision_log stg_decision_outcomes int_case_label_signals int_step_up_label_signals"


def _close(client: TestClient, case_id: Any, disposition: str) -> None:
    assert client.post(f"/v1/cases/{case_id}/claim", headers=_h(ANALYST)).status_code == 200
    r = client.post(f"/v1/cases/{case_id}/close", json={"disposition": disposition, "reason": "checked"},
                    headers=_h(ANALYST))
    assert r.status_code == 200, r.text


def _step_up_paid(settings: Any, payment: str) -> str:
    decision_id = str(uuid.uuid4())
    with psycopg.connect(dsn(settings)) as conn:
        conn.execute("insert into serving.decision_log (decision_id, request_id, decided_at, score, decision, request, "
                     "product) values (%s, 'r', now(), 0.4, 'step_up', %s, 'fraud')",
                     (decision_id, json.dumps(body(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}", 30_000,
                                                   transaction_id=payment))))
    return decision_id


@pytest.mark.slow
def test_verdicts_and_failed_step_ups_become_label_signals_at_their_known_times(client: TestClient,
                                                                                 settings: Any) -> None:
    """Cases closed and step-up outcomes reported through the API; dbt builds the label signals from the
    real tables, each at the time it became known."""
    from riskloop.data.transform import run_dbt

    run = uuid.uuid4().hex[:6]
    pay = {k: f"pay-{run}-{k}" for k in ("a1", "a2", "b", "c", "fail", "pass")}
    fraudster, customer, unsure = (f"C-{run}-{k}" for k in ("f", "l", "u"))
    a1 = score(client, body(f"tok-{run}-1", fraudster, transaction_id=pay["a1"]))
    a2 = score(client, body(f"tok-{run}-2", fraudster, transaction_id=pay["a2"]))
    b = score(client, body(f"tok-{run}-3", customer, transaction_id=pay["b"]))
    c = score(client, body(f"tok-{run}-4", unsure, transaction_id=pay["c"]))
    case_a = case_of(settings, a1["decision_id"])
    assert case_of(settings, a2["decision_id"]) == case_a
    _close(client, case_a, "fraud_confirmed")
    _close(client, case_of(settings, b["decision_id"]), "legitimate")
    _close(client, case_of(settings, c["decision_id"]), "inconclusive")
    for key, outcome in (("fail", "failed"), ("pass", "passed")):
        r = client.post(f"/v1/decisions/{_step_up_paid(settings, pay[key])}/outcome", json={"outcome": outcome},
                        headers=_h(SCORER))
        assert r.status_code == 201

    run_dbt(settings, ["build", "--select", LABEL_MODELS])

    with psycopg.connect(dsn(settings)) as conn:
        closed = dict(conn.execute(
            "select l.request->>'transaction_id', e.at from cases.case_events e "
            "join cases.case_events a on a.case_id = e.case_id and a.kind = 'decision_added' "
            "join serving.decision_log l on l.decision_id = a.decision_id "
            "where e.kind = 'closed' and l.request->>'transaction_id' = any(%s)", (list(pay.values()),)).fetchall())
        cases_ = {p: (src, fraud, at) for p, src, fraud, at in conn.execute(
            "select payment_id, source, is_fraud, known_at from intermediate.int_case_label_signals "
            "where payment_id = any(%s)", (list(pay.values()),)).fetchall()}
        recorded = conn.execute("select o.recorded_at from serving.decision_outcomes o join serving.decision_log l "
                                "using (decision_id) where l.request->>'transaction_id' = %s", (pay["fail"],)).fetchone()[0]
        step_ups = conn.execute("select payment_id, source, is_fraud, known_at from intermediate.int_step_up_label_signals "
                                "where payment_id = any(%s)", (list(pay.values()),)).fetchall()
    assert cases_ == {pay["a1"]: ("case", True, closed[pay["a1"]]), pay["a2"]: ("case", True, closed[pay["a2"]]),
                      pay["b"]: ("case", False, closed[pay["b"]])}  # inconclusive: no label
    assert step_ups == [(pay["fail"], "step_up", True, recorded)]  # a passed challenge: no label


def _review_row(card: str, customer: str) -> dict[str, Any]:
    return {"decision_id": uuid.uuid4(), "request_id": "r", "decided_at": datetime.now(UTC), "model_name": "m",
            "model_version": "1", "model_alias": "champion", "score": 0.6, "decision": "review", "reasons": [],
            "rules": [], "features": {}, "feature_timestamps": {}, "request": body(card, customer), "latency_ms": 1.0,
            "degraded": False, "product": "fraud", "policy_version": "fraud-v1", "signals": {}}


def test_concurrent_links_of_one_card_make_one_case(settings: Any) -> None:
    """Two writers (two serving processes) commit review decisions of the same card at once: one case."""
    from riskloop.decisions.cases import CaseRules
    from serving.decision_log import _copy_batch

    rules = CaseRules.from_settings(settings)
    card = f"tok-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        rows = [_review_row(card, f"C-{uuid.uuid4().hex[:8]}") for _ in range(2)]
        barrier = threading.Barrier(2)

        def write(r: dict[str, Any]) -> None:
            with psycopg.connect(dsn(settings)) as conn:
                barrier.wait()
                _copy_batch(conn, [r], rules)

        threads = [threading.Thread(target=write, args=(r,)) for r in rows]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert case_of(settings, str(rows[0]["decision_id"]), 0) == case_of(settings, str(rows[1]["decision_id"]), 0)
    with psycopg.connect(dsn(settings)) as conn:
        assert conn.execute("select count(*) from cases.cases where card_token = %s", (card,)).fetchone()[0] == 1


def test_a_failing_case_step_never_loses_the_decision_and_sync_links_it(settings: Any) -> None:
    from dataclasses import astuple

    from riskloop.decisions.cases import CaseRules
    from serving.decision_log import _copy_batch

    row = _review_row(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsn(settings)) as conn:
        _copy_batch(conn, [row], CaseRules(priorities=()))  # no priority to give: the case step fails

    class Picky(CaseRules):  # a case step that fails for one row only (6.66 at risk)
        def tier(self, max_score: float | None, amount_at_risk: float) -> Any:
            if amount_at_risk == 6.66:
                raise ValueError("no priority for this one")
            return super().tier(max_score, amount_at_risk)

    # One bad row among good ones: the others still get their cases in the same transaction.
    good = _review_row(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}")
    bad = _review_row(f"tok-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}")
    bad["request"]["amount_minor"] = 666
    with psycopg.connect(dsn(settings)) as conn:
        _copy_batch(conn, [bad, good], Picky(*astuple(CaseRules.from_settings(settings))))
    assert case_of(settings, str(good["decision_id"]), 0)
    with psycopg.connect(dsn(settings)) as conn:
        assert conn.execute("select count(*) from cases.case_events where decision_id = %s",
                            (bad["decision_id"],)).fetchone()[0] == 0
    with psycopg.connect(dsn(settings)) as conn:
        assert conn.execute("select decision from serving.decision_log where decision_id = %s",
                            (row["decision_id"],)).fetchone() == ("review",)
        assert conn.execute("select count(*) from cases.case_events where decision_id = %s",
                            (row["decision_id"],)).fetchone()[0] == 0
    assert cases.sync(settings)["review"] >= 1
    assert case_of(settings, str(row["decision_id"]), 0)
