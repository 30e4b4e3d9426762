"""Policy drafts and list changes on the /review page, in a real headless Chromium.

The approver sees what a draft changes against the live version, its attached backtest (or a
"not backtested" warning) and the shadow rules' live hit rates, and approves or rejects through
``/v1/policy`` as the key loaded in the page: the author of a change is refused (403, shown), a
second person's approval goes live in the serving process, a rejected list change never does.
The store is its own warehouse (a live version there would steer every other test's app).
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from principals import API_KEYS, key
from test_review_page import CHROMIUM, browser, serve

from riskloop.core.config import Settings
from riskloop.decisions import policy_store as store
from riskloop.decisions.backtest import BacktestReport, LabelImpact, Money
from tests.fixtures_data import own_warehouse

DANA_POLICY, DANA_REVIEWER = "dana-policy-key-0123456789ab", "dana-reviewer-key-0123456789"
SCORER = "scorer-key-policy-page-01"
KEYS = f"{API_KEYS},dana:policy:{DANA_POLICY},dana:reviewer:{DANA_REVIEWER},{SCORER}:scorer"
BODY = {"card_token": "tok_ok", "customer_id": "C-rp", "terminal_id": "T-rp", "amount_minor": 1_000,
        "currency": "EUR", "timestamp": "2026-12-07T10:00:00+00:00", "country": "DE"}
SHADOW_BIG = {"id": "SHADOW_BIG", "kind": "condition", "action": "review", "mode": "shadow",
              "condition": {"field": "amount_minor", "op": ">", "value": 30_000}}
MULE = {"id": "MULE_CARD", "kind": "condition", "action": "deny",
        "condition": {"field": "card_token", "in_list": "mule_cards"}}

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed")


@pytest.fixture(scope="module")
def store_settings(stack_env: dict[str, str]) -> Settings:
    return own_warehouse("riskloop_t_review_policy")


@pytest.fixture()
def conn(store_settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(store_settings.pg.url(store_settings.warehouse_db, driver=""), autocommit=True) as c:
        yield c


def _yaml(base: str, *, rules: list[dict], thresholds: dict[str, float] | None = None) -> str:
    data = yaml.safe_load(store.POLICY_DIR.joinpath(f"{base}.yaml").read_text())
    data["rules"] = data["rules"] + rules
    data["thresholds"] = {**data["thresholds"], **(thresholds or {})}
    return yaml.safe_dump(data)


def _report(policy_id: str, digest: str) -> dict[str, Any]:
    """A backtest report as `riskloop policy backtest --attach` stores it (the real model, its own figures)."""
    labels = LabelImpact(as_of=datetime(2026, 12, 1, tzinfo=UTC), label_delay_days=7, matured=900, unlabelled=100,
                         fraud_newly_caught=Money(n=3, amount_minor={"EUR": 123_400}),
                         good_newly_impacted=Money(n=5, amount_minor={"EUR": 50_000}))
    report = BacktestReport(
        policy_id=policy_id, policy_digest=digest, product="fraud", period_from=datetime(2026, 11, 1, tzinfo=UTC),
        period_to=datetime(2026, 12, 1, tzinfo=UTC), outcomes=["allow", "step_up", "review", "deny"],
        n_decisions=1000, n_changed=8,
        matrix={"allow": {"allow": 950, "review": 8}, "review": {"review": 30}, "deny": {"deny": 12}},
        counts_before={"allow": 958, "review": 30, "deny": 12}, counts_after={"allow": 950, "review": 38, "deny": 12},
        labels=labels, review_queue=[{"day": "2026-11-01", "before": 1, "after": 3}])
    return report.to_dict()


@pytest.mark.slow
def test_approver_sees_diff_backtest_and_shadow_and_decides_drafts_and_list_changes(
        store_settings: Settings, conn: psycopg.Connection) -> None:
    from playwright.sync_api import expect

    from serving.app import create_app
    from serving.config import ServingSettings

    # a live version with a shadow rule, and decisions it watched (two of four over the amount)
    store.create_list(conn, "mule_cards", "card", "dana", "cards of a mule ring")
    v3 = store.draft(conn, _yaml("fraud-v2", rules=[SHADOW_BIG]), "dana", features=None)
    store.approve(conn, v3.id, "bob", "watch big payments")
    conn.execute("create schema if not exists marts")
    conn.execute("create table if not exists marts.fct_transactions (payment_id text, tx_at timestamptz, is_fraud int)")
    v4 = store.draft(conn, _yaml("fraud-v2", rules=[{**SHADOW_BIG, "mode": "live"}, MULE], thresholds={"review": 0.45}),
                     "dana", features=None, note="promote SHADOW_BIG, block mule cards")
    store.attach_backtest(conn, v4.id, "dana", _report(v4.id, v4.digest))
    v5 = store.draft(conn, _yaml("fraud-v2", rules=[MULE]), "dana", features=None)
    good = store.add_entries(conn, "mule_cards", ["tok_mule_1", "tok_mule_2"], "case 4711", "dana")
    typo = store.add_entries(conn, "mule_cards", ["tok_ok"], "a typo", "dana")

    app = create_app(store_settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"}),
                     ServingSettings(api_keys=KEYS))
    with serve(app) as base, browser() as b:
        score = {"Authorization": f"Bearer {SCORER}"}
        deadline = time.monotonic() + 30
        while app.state.fraud_policy.id != v3.id:
            assert time.monotonic() < deadline, "v3 never applied"
            time.sleep(0.1)
        ids = [httpx.post(f"{base}/v1/score/fraud", json={**BODY, "amount_minor": amount}, headers=score,
                          timeout=30).json()["decision_id"] for amount in (40_000, 50_000, 1_000, 2_000)]
        while conn.execute("select count(*) from serving.decision_log where decision_id = any(%s::uuid[])",
                           (ids,)).fetchone()[0] < 4:
            assert time.monotonic() < deadline + 30, "decisions never logged"
            time.sleep(0.1)

        page = b.new_page()
        page.goto(f"{base}/review")
        page.fill("#key", DANA_REVIEWER)  # the author, holding a reviewer key too
        page.click("#load")
        v4_row = page.wait_for_selector(f'#policy-drafts tr[data-policy="{v4.id}"]')
        assert v3.id in v4_row.text_content() and "attached" in v4_row.text_content()
        assert "not backtested" in page.text_content(f'#policy-drafts tr[data-policy="{v5.id}"]')
        assert page.query_selector(f'#policy-drafts tr[data-policy="{v3.id}"]') is None  # approved: not waiting
        changes = page.locator("#list-changes tbody tr")
        expect(changes).to_have_count(2)
        assert "tok_mule_1, case 4711; tok_mule_2, case 4711" in page.text_content(
            f'#list-changes tr[data-change="{good["change_id"]}"]')

        page.click(f'#policy-drafts tr[data-policy="{v4.id}"] button.open')
        expect(page.locator("#policy-title")).to_have_text(f"{v4.id} (drafted)")
        assert page.is_hidden("#policy-warning")
        assert f"against {v3.id}" in page.text_content("#policy-diff-base")
        assert page.locator('#policy-diff tr[data-change="added"]').all_text_contents()[0].startswith("addedMULE_CARD")
        changed = page.text_content('#policy-diff tr[data-change="changed"][data-name="SHADOW_BIG"]')
        assert '"mode":"shadow"' in changed and '"mode":"live"' in changed
        assert page.locator('#policy-diff tr[data-change="removed"]').count() == 0
        thresholds = page.text_content('#policy-diff tr[data-change="setting"][data-name="thresholds"]')
        assert '"review":0.5' in thresholds and '"review":0.45' in thresholds
        assert "8 of 1000 decisions change" in page.text_content("#bt-summary")
        assert page.text_content('#bt-rates tr[data-rate="review"]') == "review3.00 %3.80 %+0.80 %"
        assert page.text_content('#bt-changes tr[data-from="allow"][data-to="review"]') == "allowreview8"
        assert page.text_content('#bt-labels tr[data-figure="fraud_newly_caught"]').endswith("3 (1,234.00 EUR)")
        assert page.text_content('#bt-labels tr[data-figure="good_newly_impacted"]').endswith("5 (500.00 EUR)")
        assert "+2.0 per day on average" in page.text_content("#bt-queue")
        shadow = page.text_content('#policy-shadow tr[data-rule="SHADOW_BIG"]')
        assert shadow.startswith(f"{v3.id}SHADOW_BIG42") and "50.00 %" in shadow

        page.click("#policy-approve")  # the author: refused by the server, shown
        page.wait_for_selector("#message.error")
        assert "403" in page.text_content("#message") and "someone else must approve" in page.text_content("#message")
        page.click(f'#list-changes tr[data-change="{good["change_id"]}"] button.approve')
        expect(page.locator("#message")).to_contain_text(f"list change {good['change_id']} was drafted by dana")

        page.click(f'#policy-drafts tr[data-policy="{v5.id}"] button.open')
        expect(page.locator("#policy-title")).to_have_text(f"{v5.id} (drafted)")
        assert page.is_visible("#policy-warning") and "NOT BACKTESTED" in page.text_content("#policy-warning")
        assert page.is_hidden("#backtest") and page.text_content("#bt-summary") == "no backtest attached"

        page.fill("#key", key("alice"))
        page.click("#load")
        page.wait_for_selector(f'#policy-drafts tr[data-policy="{v4.id}"]')
        page.click(f'#policy-drafts tr[data-policy="{v4.id}"] button.open')
        expect(page.locator("#policy-title")).to_have_text(f"{v4.id} (drafted)")
        page.fill("#policy-reason", "review rate +0.8 pt for 3 frauds caught")
        page.click("#policy-approve")
        expect(page.locator("#message")).to_have_text(re.compile(rf"^approved {v4.id} by alice \(change \d+\)$"))
        expect(page.locator("#policy-title")).to_have_text(f"{v4.id} (approved)")
        assert page.is_disabled("#policy-approve") and "alice" in page.text_content("#policy-history")
        page.click(f'#list-changes tr[data-change="{typo["change_id"]}"] button.reject')
        expect(page.locator("#message")).to_contain_text("a rejection needs a reason")
        page.fill("#list-reason", "tok_ok is a good customer's card")
        page.click(f'#list-changes tr[data-change="{typo["change_id"]}"] button.reject')
        expect(page.locator("#message")).to_contain_text(f"rejected list change {typo['change_id']} by alice")
        page.click(f'#list-changes tr[data-change="{good["change_id"]}"] button.approve')
        expect(page.locator("#message")).to_contain_text(f"approved list change {good['change_id']} by alice")
        expect(page.locator("#list-changes tbody tr")).to_have_count(0)

        # live in the serving process: the version, the approved entries, never the rejected one
        deadline = time.monotonic() + 10
        while app.state.fraud_policy.id != v4.id or app.state.fraud_policy.lists.get("mule_cards") != frozenset(
                {"tok_mule_1", "tok_mule_2"}):
            assert time.monotonic() < deadline, (app.state.fraud_policy.id, app.state.fraud_policy.lists)
            time.sleep(0.05)
        out = httpx.post(f"{base}/v1/score/fraud", json={**BODY, "card_token": "tok_mule_2"}, headers=score,
                         timeout=30).json()
        assert out["decision"] == "deny" and "MULE_CARD" in out["rules"]
        ok = httpx.post(f"{base}/v1/score/fraud", json=BODY, headers=score, timeout=30).json()
        assert "MULE_CARD" not in ok["rules"]

    assert [(h["kind"], h["actor"]) for h in store.history(conn, v4.id)] == [
        ("drafted", "dana"), ("backtested", "dana"), ("approved", "alice")]
    assert {c["change_id"]: (c["state"], c["decided_by"]) for c in store.list_changes(conn, name="mule_cards")} == {
        good["change_id"]: ("approved", "alice"), typo["change_id"]: ("rejected", "alice")}
    # approval can be made to require a backtest (setting policy_require_backtest)
    with pytest.raises(store.StoreError, match="no backtest attached"):
        store.approve(conn, v5.id, "alice", require_backtest=True)
    store.approve(conn, v5.id, "alice")
    assert store.live_version(conn, "fraud") == v5.version
    assert datetime.now(UTC) - store.backtest_of(conn, v4.id)["at"] < timedelta(hours=1)
