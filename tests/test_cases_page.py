"""The /cases page of the scoring service in a real headless Chromium, as /review is tested.

A rules-only app under uvicorn on a loopback port scores two payments that go to review (two
cases); the analyst loads the queue, sorts it, opens a case (its decisions with their reason codes,
rules and features, the entity's payments), finds another analyst's case unclaimable, claims,
notes and closes one through the page; the events are read back from Postgres.
Skipped only if /usr/bin/chromium is absent.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid

import httpx
import psycopg
import pytest
from test_review_page import CHROMIUM, browser, serve

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.decisions import cases

ANA, BOB, SCORER = "page-analyst-key-ana-000", "page-analyst-key-bob-000", "page-scorer-key-00000000"

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed")


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _payment(customer: str, amount_minor: int) -> dict:
    return {"card_token": f"tok-{uuid.uuid4().hex[:8]}", "customer_id": customer, "terminal_id": "T-page",
            "amount_minor": amount_minor, "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00"}


@pytest.mark.slow
def test_cases_page_claims_notes_and_closes_a_case(settings: Settings) -> None:
    from playwright.sync_api import expect
    from test_cases import case_of

    from serving.app import create_app
    from serving.config import ServingSettings

    app_settings = settings.model_copy(update={
        "fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}",
        "review_identities": {fingerprint(ANA): "ana", fingerprint(BOB): "bob"}})
    app = create_app(app_settings, ServingSettings(api_keys=f"{ANA}:analyst,{BOB}:analyst,{SCORER}:scorer",
                                                   log_linger_s=0.0))
    customer, big = f"C-page-{uuid.uuid4().hex[:6]}", f"C-page-{uuid.uuid4().hex[:6]}"
    with serve(app) as base, browser() as b:
        auth = {"Authorization": f"Bearer {SCORER}"}
        small_id = httpx.post(f"{base}/v1/score/fraud", json=_payment(customer, 60_000), headers=auth).json()["decision_id"]
        big_id = httpx.post(f"{base}/v1/score/fraud", json=_payment(big, 500_000), headers=auth).json()["decision_id"]
        small_case, big_case = str(case_of(settings, small_id)), str(case_of(settings, big_id))
        timeline_event = f"evt-page-{uuid.uuid4().hex[:6]}"  # a payment webhook of the customer, parsed
        with psycopg.connect(dsn(settings)) as conn:
            conn.execute("insert into realtime.payment_events (processor, event_id, card_token, customer_id, "
                         "amount_minor, occurred_at, currency) values ('stripe', %s, 'tok-w', %s, 1234, now(), 'EUR')",
                         (timeline_event, customer))
        # Bob holds the big case already.
        assert httpx.post(f"{base}/v1/cases/{big_case}/claim", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200

        page = b.new_page()
        page.goto(f"{base}/cases")
        page.fill("#key", SCORER)  # a scorer may not read cases
        page.click("#load")
        page.wait_for_selector("#message.error")
        assert "403" in page.text_content("#message")

        page.fill("#key", ANA)
        page.click("#load")
        page.fill("#f-entity", customer)
        page.click("#apply")
        row = page.wait_for_selector(f'#queue tr[data-case="{small_case}"]')
        assert "P2" in row.text_content() and "open" in row.text_content()  # 600.00 at risk, no score: P2
        page.fill("#f-entity", "")
        page.click("#apply")
        page.click('th[data-sort="age"]')
        expect(page.locator("#message")).to_contain_text("sorted by age")
        page.click('th[data-sort="priority"]')
        expect(page.locator("#message")).to_contain_text("sorted by priority")
        ranks = page.eval_on_selector_all("#queue tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
        assert ranks == sorted(ranks)  # P1 before P2 before P3

        # Someone else's case: the claim is refused and the page says why.
        page.fill("#f-entity", big)
        page.click("#apply")
        page.click(f'#queue tr[data-case="{big_case}"] button.open')
        expect(page.locator("#case-title")).to_contain_text(big_case)
        assert page.is_disabled("#claim")  # in review by bob

        page.fill("#f-entity", customer)
        page.click("#apply")
        page.click(f'#queue tr[data-case="{small_case}"] button.open')
        expect(page.locator("#case-title")).to_contain_text(small_case)
        decision_row = page.text_content(f'#decisions tr[data-decision="{small_id}"]')
        assert "DEGRADED_AMOUNT_REVIEW" in decision_row and "600.00 EUR" in decision_row
        assert "12.34 EUR" in page.text_content("#timeline") and timeline_event in page.text_content("#timeline")
        assert page.is_disabled("#close")  # not claimed yet
        page.click("#claim")
        expect(page.locator("#message")).to_have_text("claimed by ana")
        assert "in_review" in page.text_content('#facts tr[data-fact="status"]')
        page.fill("#note-text", "customer confirmed the purchase by phone")
        page.click("#note")
        expect(page.locator("#message")).to_have_text("note added (1)")
        page.check('input[name=disposition][value="legitimate"]')
        assert page.is_disabled("#close")  # a reason is required
        page.fill("#reason", "known customer, confirmed by phone")
        page.click("#close")
        expect(page.locator("#message")).to_have_text("closed as legitimate by ana")
        assert "legitimate: known customer, confirmed by phone (ana)" in page.text_content('#facts tr[data-fact="disposition"]')
        assert page.query_selector(f'#queue tr[data-case="{small_case}"]') is None  # left the open queue

    with psycopg.connect(dsn(settings)) as conn:
        rows = conn.execute("select kind, actor, details from cases.case_events where case_id = %s order by seq",
                            (small_case,)).fetchall()
    assert [(k, a) for k, a, _ in rows] == [("opened", "system:riskloop"), ("decision_added", "system:riskloop"),
                                            ("claimed", "ana"), ("noted", "ana"), ("closed", "ana")]
    # the note is about the case's customer: stored sealed under their key (riskloop.core.subject_keys)
    assert "phone" not in json.dumps(rows[3][2]) and rows[3][2]["personal"]["fields"] == ["text"]
    with psycopg.connect(dsn(settings)) as conn:
        assert cases.events_of(conn, small_case)[3]["details"] == {"text": "customer confirmed the purchase by phone"}
    assert rows[4][2] == {"disposition": "legitimate", "reason": "known customer, confirmed by phone"}
