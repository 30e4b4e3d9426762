"""The policy backtest on a real decision log: a hand-built log whose every change is known, and the
vectorised evaluation against :meth:`Policy.decide`, row by row, on stored decisions."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fixtures_marts import isolated_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from riskloop.core.config import Settings
from riskloop.decisions import log as decision_log
from riskloop.decisions.policy import Policy, policy_by_id

DAY1 = datetime(2001, 3, 1, 10, tzinfo=UTC)
DAY2 = datetime(2001, 3, 2, 10, tzinfo=UTC)
AS_OF = datetime(2001, 3, 20, tzinfo=UTC)


def write_log(settings: Settings, rows: list[dict[str, Any]]) -> None:
    from serving.decision_log import INSERT

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn, conn.cursor() as cur:
        cur.executemany(INSERT, [tuple(
            Jsonb(r.get(c, [] if c in ("reasons", "rules") else {})) if c in decision_log.JSON_COLUMNS and
            (c != "shadow" or r.get(c) is not None) else r.get(c) for c in decision_log.COLUMNS) for r in rows])


def write_facts(settings: Settings, facts: list[tuple[str, datetime, int, datetime | None]]) -> None:
    """The columns of ``marts.fct_transactions`` the backtest reads (dbt builds the real one)."""
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        conn.execute("create schema if not exists marts")
        conn.execute("drop table if exists marts.fct_transactions")
        conn.execute("create table marts.fct_transactions (payment_id text, tx_at timestamptz, is_fraud int, "
                     "fraud_known_at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany("insert into marts.fct_transactions values (%s, %s, %s, %s)", facts)


def decision(tx: str, at: datetime, score: float | None, logged: str, amount: int, currency: str = "EUR",
             rules: list[str] | None = None, features: dict | None = None, product: str = "fraud") -> dict[str, Any]:
    return {"decision_id": uuid.uuid4(), "request_id": tx, "decided_at": at, "model_name": "riskloop-fraud",
            "model_version": "1", "model_alias": "champion", "score": score, "decision": logged,
            "rules": rules or [], "features": {"customer_nb_tx_1d": 1.0} if features is None else features,
            "request": {"transaction_id": tx, "card_token": f"tok_{tx}", "customer_id": "C1", "terminal_id": "T1",
                        "amount_minor": amount, "currency": currency, "timestamp": at.isoformat(), "device_id": None},
            "latency_ms": 3.0, "degraded": score is None, "product": product, "policy_version": "fraud-v1",
            "signals": {"device_known": True}, "serving_mode": "champion"}


def candidate() -> Policy:
    """fraud-v1 with the review threshold down from 0.5 to 0.4 and a review rule above 2,000.00."""
    base = policy_by_id("fraud-v1").model_dump(exclude={"digest"})
    base["version"] = 9
    base["thresholds"] = {**base["thresholds"], "review": 0.4}
    base["rules"] = [*base["rules"], {"id": "LARGE_AMOUNT_REVIEW", "kind": "amount_above", "amount_minor": 200000,
                                      "action": "review"}]
    return Policy.model_validate(base)


@pytest.fixture(scope="module")
def known_log(stack_env: dict[str, str]) -> Settings:
    settings = isolated_settings("riskloop_t_backtest")
    rows = [
        decision("a", DAY1, 0.45, "step_up", 10_000),                    # → review (threshold), fraud caught both
        decision("b", DAY1, 0.10, "allow", 250_000),                     # → review (amount rule), good impacted
        decision("c", DAY1, 0.20, "allow", 300_000, "GBP"),              # → review (amount rule), fraud newly caught
        decision("d", DAY1, 0.95, "deny", 500_000),                      # deny stays deny (the rule fires too)
        decision("e", DAY1, 0.05, "allow", 1_000),                       # unchanged, good
        decision("f", DAY2, 0.42, "step_up", 5_000),                     # → review, no fact row: unlabelled
        decision("g", DAY2, None, "review", 60_000, rules=["DEGRADED_AMOUNT_REVIEW"], features={}),  # unchanged
        decision("h", DAY2, 0.35, "step_up", 1_000),                     # unchanged, not matured
        decision("i", DAY2, 0.10, "allow", 210_000),                     # → review; fraud known after as-of: good
        decision("z", DAY2 + timedelta(days=5), 0.10, "allow", 900_000),  # outside the period
        {**decision("k", DAY2, 0.9, "decline", 900_000, product="credit"), "policy_version": "credit-v1"},
    ]
    write_log(settings, rows)
    write_facts(settings, [
        ("a", DAY1, 1, DAY1 + timedelta(days=2)), ("b", DAY1, 0, None), ("c", DAY1, 1, DAY1 + timedelta(days=3)),
        ("d", DAY1, 1, DAY1 + timedelta(days=1)), ("e", DAY1, 0, None),
        ("h", datetime(2001, 3, 15, tzinfo=UTC), 1, datetime(2001, 3, 16, tzinfo=UTC)),  # after as-of - 7 days
        ("i", DAY2, 1, AS_OF + timedelta(days=1))])  # f and g: no payment (never authorised)
    return settings


def test_backtest_reports_exactly_the_known_changes(known_log: Settings) -> None:
    from riskloop.decisions.backtest import backtest

    report = backtest(known_log, candidate(), datetime(2001, 3, 1, tzinfo=UTC), datetime(2001, 3, 3, tzinfo=UTC),
                      as_of=AS_OF)
    assert report.n_decisions == 9 and report.n_changed == 5
    m = report.matrix
    assert m["step_up"] == {"allow": 0, "step_up": 1, "review": 2, "deny": 0}
    assert m["allow"] == {"allow": 1, "step_up": 0, "review": 3, "deny": 0}
    assert m["review"]["review"] == 1 and m["deny"]["deny"] == 1
    assert report.counts_before == {"allow": 4, "step_up": 3, "review": 1, "deny": 1}
    assert report.counts_after == {"allow": 1, "step_up": 1, "review": 6, "deny": 1}
    rates = report.rates
    assert rates["before"] == pytest.approx({"approval": 4 / 9, "review": 1 / 9, "deny": 1 / 9})
    assert rates["after"] == pytest.approx({"approval": 1 / 9, "review": 6 / 9, "deny": 1 / 9})

    lab = report.labels
    assert (lab.matured, lab.unlabelled, lab.label_delay_days) == (6, 3, 7)
    assert (lab.fraud.n, lab.good.n) == (3, 3)
    assert lab.fraud_caught_before.model_dump() == {"n": 2, "amount_minor": {"EUR": 510_000}}
    assert lab.fraud_caught_after.model_dump() == {"n": 3, "amount_minor": {"EUR": 510_000, "GBP": 300_000}}
    assert lab.fraud_newly_caught.model_dump() == {"n": 1, "amount_minor": {"GBP": 300_000}}
    assert lab.fraud_newly_missed.n == 0
    assert lab.good_impacted_before.n == 0
    assert lab.good_impacted_after.model_dump() == {"n": 2, "amount_minor": {"EUR": 460_000}}
    assert lab.good_newly_impacted.model_dump() == {"n": 2, "amount_minor": {"EUR": 460_000}}
    assert lab.good_released.n == 0

    assert [(q.day.isoformat(), q.before, q.after, q.added) for q in report.review_queue] == [
        ("2001-03-01", 0, 3, 3), ("2001-03-02", 1, 3, 2)]
    assert report.review_added_per_day == {"mean": 2.5, "max": 3.0, "days": 2}
    hits = {r.id: r.fired for r in report.rules}
    assert hits["LARGE_AMOUNT_REVIEW"] == 4 and hits["DEGRADED_AMOUNT_REVIEW"] == 1 and hits["HARD_AMOUNT_LIMIT"] == 0
    assert report.inputs_missing == {"customer_nb_tx_1d": 1}

    by_tx = {e.amount_minor: e for e in report.examples}
    assert len(report.examples) == 5
    assert by_tx[250_000].before == "allow" and by_tx[250_000].after == "review"
    assert by_tx[250_000].rules_after == ["LARGE_AMOUNT_REVIEW"] and by_tx[250_000].label == "good"
    assert by_tx[300_000].label == "fraud" and by_tx[300_000].currency == "GBP"
    assert by_tx[5_000].label == "unlabelled" and by_tx[5_000].score == pytest.approx(0.42)

    # read by one query instead of two parts at once: the same report
    alone = backtest(known_log, candidate(), datetime(2001, 3, 1, tzinfo=UTC), datetime(2001, 3, 3, tzinfo=UTC),
                     as_of=AS_OF, workers=1)
    assert alone.model_dump(exclude={"seconds"}) == report.model_dump(exclude={"seconds"})

    out = json.loads(json.dumps(report.to_dict()))
    assert out["matrix"]["allow"]["review"] == 3 and out["review_queue"][1]["added"] == 2
    assert out["rates"]["after"]["review"] == pytest.approx(6 / 9)


def test_backtest_of_the_logged_policy_changes_nothing(known_log: Settings) -> None:
    from riskloop.decisions.backtest import backtest

    report = backtest(known_log, policy_by_id("fraud-v1"), datetime(2001, 3, 1, tzinfo=UTC),
                      datetime(2001, 3, 3, tzinfo=UTC), as_of=AS_OF, examples=3)
    assert report.n_decisions == 9 and report.n_changed == 0 and report.examples == []
    credit = backtest(known_log, policy_by_id("credit-v1"), datetime(2001, 3, 1, tzinfo=UTC),
                      datetime(2001, 3, 3, tzinfo=UTC))
    assert credit.n_decisions == 1 and credit.counts_before["decline"] == 1


def test_backtest_refuses_an_empty_period(known_log: Settings) -> None:
    from riskloop.decisions.backtest import BacktestError, backtest

    with pytest.raises(BacktestError, match="empty period"):
        backtest(known_log, candidate(), DAY2, DAY1)


def test_backtest_cli_prints_the_report_as_json(known_log: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from riskloop.cli import app

    monkeypatch.setenv("RISKLOOP_DATABASE_URL", known_log.database_url)
    runner = CliRunner()
    out = runner.invoke(app, ["policy", "backtest", "fraud-v2", "--from", "2001-03-01", "--to", "2001-03-03",
                              "--as-of", AS_OF.isoformat(), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["policy_id"] == "fraud-v2" and report["n_decisions"] == 9
    assert report["labels"]["fraud_caught_after"]["n"] >= 1 and len(report["review_queue"]) == 2
    table = runner.invoke(app, ["policy", "backtest", "fraud-v2", "--from", "2001-03-01", "--to", "2001-03-03"])
    assert table.exit_code == 0, table.output
    missing = runner.invoke(app, ["policy", "backtest", "fraud-v404", "--from", "2001-03-01", "--to", "2001-03-03"])
    assert missing.exit_code == 2 and "fraud-v404" in missing.output


def test_backtest_applies_a_drafted_list_change(known_log: Settings) -> None:
    """A rule and the list change it needs, both drafts, backtested together (``--list-change``);
    without it the list is as approved (empty), and a decided change is refused."""
    import yaml
    from typer.testing import CliRunner

    from riskloop.cli import app
    from riskloop.decisions import policy_store as store

    with psycopg.connect(known_log.pg.url(known_log.warehouse_db, driver=""), autocommit=True) as conn:
        store.create_list(conn, "bt_cards", "card", "alice")
        data = yaml.safe_load(store.export_yaml(conn, "fraud-v1"))
        data["rules"].append({"id": "BT_CARD", "kind": "condition", "action": "deny",
                              "condition": {"field": "card_token", "in_list": "bt_cards"}})
        draft = store.draft(conn, yaml.safe_dump(data), "alice", features=None)
        change = store.add_entries(conn, "bt_cards", ["tok_b"], "mule", "alice")["change_id"]
        rejected = store.add_entries(conn, "bt_cards", ["tok_e"], "typo", "alice")["change_id"]
        store.reject_list_change(conn, rejected, "bob", "wrong card")

    env = {"RISKLOOP_DATABASE_URL": known_log.database_url}
    args = ["policy", "backtest", draft.id, "--from", "2001-03-01", "--to", "2001-03-03", "--as-of", AS_OF.isoformat(),
            "--json"]
    alone = CliRunner().invoke(app, args, env=env)
    assert alone.exit_code == 0, alone.output
    assert json.loads(alone.stdout)["n_changed"] == 0 and json.loads(alone.stdout)["list_changes"] == []
    both = CliRunner().invoke(app, [*args, "--list-change", str(change)], env=env)
    assert both.exit_code == 0, both.output
    report = json.loads(both.stdout)
    assert report["n_changed"] == 1 and report["matrix"]["allow"]["deny"] == 1 and report["list_changes"] == [change]
    assert [(e["amount_minor"], e["rules_after"]) for e in report["examples"]] == [(250_000, ["BT_CARD"])]
    refused = CliRunner().invoke(app, [*args, "--list-change", str(rejected)], env=env)
    assert refused.exit_code == 2 and "rejected" in refused.output


# --- the vectorised evaluation is Policy.decide, row by row ------------------------------------

FEATURES = ("customer_nb_tx_1d", "card_tx_count_10m", "customer_tx_count_1h", "pep", "kyc_level", "amount")
REALTIME = ("card_tx_count_10m", "customer_tx_count_1h")


def random_row(rng: random.Random, i: int, start: datetime) -> dict[str, Any]:
    """A fraud or credit decision with the awkward cases: absent and null values, degraded, stale stamps."""
    at = start + timedelta(seconds=i)
    maybe = rng.random
    request: dict[str, Any] = {"transaction_id": f"p{i}", "currency": rng.choice(["EUR", "GBP"]),
                               "timestamp": at.isoformat(), "customer_id": "C", "card_token":
                               rng.choice(["tok_blocked_demo", "tok_a", "tok_b"]),
                               "terminal_id": rng.choice(["T-blocked-demo", "T1"])}
    if maybe() < 0.9:
        request["amount_minor"] = rng.choice([1, 49_999, 50_000, 50_001, 200_000, 1_000_000, 1_000_001, 3_000_000])
    if maybe() < 0.8:
        request["country"] = rng.choice(["DE", "FR", "CU", "KP", None])
    if maybe() < 0.7:
        request["device_id"] = rng.choice(["dev1", None])
    features = {f: rng.choice([None, 0, 1, 2.5, 4, 5, 20, 21, 1e6]) for f in FEATURES if maybe() < 0.8}
    signals: dict[str, Any] = {}
    if maybe() < 0.8:
        signals["device_known"] = rng.choice([True, False, None])
    if maybe() < 0.6:
        signals.update(distance_km=rng.choice([None, 0.0, 999.0, 1000.0, 5000.0]),
                       elapsed_h=rng.choice([None, 0.5, 1.0, 10.0]))
    stamps = {v: (None if maybe() < 0.2 else (at - timedelta(seconds=rng.choice([-5, 0, 30, 600, 601, 4000, 90_000])))
                  .isoformat()) for v in ("card_realtime", "customer_realtime") if maybe() < 0.8}
    credit = maybe() < 0.2
    score = None if maybe() < 0.15 else rng.random()
    return {"decision_id": uuid.uuid4(), "request_id": f"p{i}", "decided_at": at, "model_name": "m", "model_version": "1",
            "model_alias": "champion", "score": score, "decision": "refer" if credit else "review",
            "features": features, "feature_timestamps": stamps, "request": request, "latency_ms": 1.0,
            "degraded": score is None, "product": "credit" if credit else "fraud",
            "policy_version": "credit-v1" if credit else "fraud-v2", "signals": signals}


@pytest.fixture(scope="module")
def random_log(stack_env: dict[str, str]) -> tuple[Settings, datetime, list[dict[str, Any]]]:
    settings = isolated_settings("riskloop_t_backtest_rows")
    start = datetime(2001, 6, 1, tzinfo=UTC)
    rng = random.Random(7)
    write_log(settings, [random_row(rng, i, start) for i in range(600)])
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        cols = ["decision_id", "score", "request", "features", "signals", "feature_timestamps", "product"]
        stored = [dict(zip(cols, r, strict=True)) for r in
                  conn.execute(f"select decision_id::text, {', '.join(cols[1:])} from {decision_log.TABLE}").fetchall()]
    return settings, start, stored


def assert_agrees(settings: Settings, start: datetime, stored: list[dict[str, Any]], policy: Policy) -> None:
    import pandas as pd

    from riskloop.decisions.backtest import evaluate, evaluate_rows, read_chunks

    frame = pd.concat(list(read_chunks(settings, policy, start, start + timedelta(days=1), labelled=False,
                                       documents=True)), ignore_index=True)
    rows = {r["decision_id"]: r for r in stored if r["product"] == policy.policy}
    assert len(frame) == len(rows) > 50
    for ev in (evaluate(policy, frame), evaluate_rows(policy, frame)):  # the columns, and the fallback
        for i, did in enumerate(frame["decision_id"]):
            r = rows[did]
            want = policy.decide(r["score"], r["request"], r["features"], r["signals"], r["feature_timestamps"])
            got = (policy.outcomes[ev.decision[i]], ev.rules_at(i))
            assert got == want, (r, policy)


def test_the_shipped_policies_evaluate_as_decide(random_log) -> None:
    settings, start, stored = random_log
    for pid in ("fraud-v1", "fraud-v2", "credit-v1"):
        assert_agrees(settings, start, stored, policy_by_id(pid))


_FRAUD = ("allow", "step_up", "review", "deny")


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Random fraud policies over every rule kind, with the edges the rows probe."""
    cuts = sorted(draw(st.lists(st.floats(0, 1), min_size=3, max_size=3)))
    rules = []
    for n in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["amount_above", "country_in", "card_in", "terminal_in", "feature_above",
                                     "feature_equals", "new_device_amount_above", "impossible_travel"]))
        rule: dict[str, Any] = {"id": f"R{n}", "kind": kind, "action": draw(st.sampled_from(_FRAUD)),
                                "when": draw(st.sampled_from(["always", "scored", "degraded"]))}
        if kind in ("amount_above", "new_device_amount_above"):
            rule["amount_minor"] = draw(st.sampled_from([1, 49_999, 50_000, 200_000, 1_000_000]))
        elif kind == "country_in":
            rule["countries"] = draw(st.lists(st.sampled_from(["DE", "CU", "KP", "US"]), min_size=1))
        elif kind == "card_in":
            rule["card_tokens"] = ["tok_blocked_demo"]
        elif kind == "terminal_in":
            rule["terminal_ids"] = ["T-blocked-demo"]
        elif kind in ("feature_above", "feature_equals"):
            rule["feature"] = draw(st.sampled_from(FEATURES))
            rule["max" if kind == "feature_above" else "value"] = draw(st.sampled_from([0, 1, 2.5, 4, 20]))
            if rule["feature"] in REALTIME and draw(st.booleans()):
                rule["max_age_s"] = draw(st.sampled_from([1, 600, 3600]))
        else:
            rule["max_speed_kmh"] = draw(st.sampled_from([100, 900]))
            rule["min_distance_km"] = draw(st.sampled_from([0, 1000]))
        rules.append(rule)
    return Policy.model_validate({
        "policy": "fraud", "version": 1, "thresholds": dict(zip(("step_up", "review", "deny"), cuts, strict=True)),
        "rules": rules, "degraded_decision": draw(st.sampled_from([None, *_FRAUD]))})


@given(policy=policies())
@hyp_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_policy_evaluates_as_decide(random_log, policy: Policy) -> None:
    settings, start, stored = random_log
    assert_agrees(settings, start, stored, policy)
