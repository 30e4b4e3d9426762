"""Tripwires on a real ``serving.decision_log`` and ``serving.decision_overrides``.

Rows are written in a window far in the past (a random day of 2001) that no other test writes to,
and the tripwires are evaluated "as of" the end of that window.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb
from pydantic import SecretStr
from sinks import http_sink

from riskloop.core.config import Settings


def write(settings: Settings, rows: list[dict]) -> None:
    from riskloop.decisions import log as decision_log
    from riskloop.decisions import overrides
    from serving.decision_log import INSERT

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        with conn.cursor() as cur:
            cur.executemany(INSERT, [tuple(
                Jsonb(r.get(c, [] if c in ("reasons", "rules") else {})) if c in decision_log.JSON_COLUMNS
                else r.get(c) for c in decision_log.COLUMNS) for r in rows])
            for r in rows:
                if r.get("_override"):
                    overrides.insert(conn, {"override_id": uuid.uuid4(), "decision_id": r["decision_id"],
                                            "overridden_at": r["decided_at"] + timedelta(minutes=5),
                                            "previous_decision": r["decision"], "decision": "allow",
                                            "reason": "customer verified by phone", "actor": "reviewer:abc",
                                            "request_id": None})


def stream(start: datetime, minutes: float, n: int, model: str, *, allow: float, review: float, degraded: float,
           slow: float, rule_share: float, override_share: float, seed: int) -> list[dict]:
    """``n`` fraud decisions spread over ``minutes`` from ``start`` with the given shares."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        u = rng.random()
        decision = "allow" if u < allow else "review" if u < allow + review else "deny"
        ruled = rng.random() < rule_share
        rows.append({
            "decision_id": uuid.uuid4(), "request_id": f"r{i}", "model_name": model, "model_version": "1",
            "decided_at": start + timedelta(minutes=minutes * i / n), "model_alias": "champion",
            "score": rng.random(), "decision": "deny" if ruled else decision,
            "rules": ["velocity_burst"] if ruled else [], "request": {}, "product": "fraud",
            "degraded": rng.random() < degraded, "latency_ms": 900.0 if rng.random() < slow else 4.0,
            "policy_version": "fraud-v1", "_override": ruled and rng.random() < override_share,
        })
    return rows


def test_decision_stream_tripwires_raise_through_the_alert_path(settings: Settings) -> None:
    from riskloop.core.alerts import process
    from riskloop.monitoring.tripwires import evaluate

    settings = settings.model_copy(update={
        "alert_min_samples": 100, "alert_raise_after": 1, "tripwire_window_minutes": 60,
        "tripwire_baseline_hours": 24})
    end = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(360))
    model = f"m-{uuid.uuid4().hex[:6]}"
    healthy = dict(allow=0.90, review=0.04, degraded=0.0, slow=0.0, rule_share=0.10, override_share=0.05)
    # a healthy day, then a healthy hour: every tripwire is clean
    write(settings, stream(end - timedelta(hours=25), 24 * 60, 1000, model, **healthy, seed=1))
    write(settings, stream(end - timedelta(hours=1), 59, 300, model, **healthy, seed=2))
    clean = {(c.kind, c.key): c for c in evaluate(settings, now=end)}
    assert {k for k, c in clean.items() if c.breached} == set(), [c.summary for c in clean.values() if c.breached]
    assert clean[("approval_rate_drop", "fraud")].breached is False
    assert clean[("latency_p99", "fraud")].details["p99_ms"] == 4.0
    assert clean[("override_spike", "rule:velocity_burst")].breached is False

    # the next hour goes wrong on every axis at once
    later = end + timedelta(hours=1)
    write(settings, stream(end, 59, 300, model, allow=0.60, review=0.20, degraded=0.10, slow=0.03, rule_share=0.15,
                           override_share=0.60, seed=3))
    checks = {(c.kind, c.key): c for c in evaluate(settings, now=later)}
    tripped = {k for k, c in checks.items() if c.breached}
    assert tripped == {("approval_rate_drop", "fraud"), ("review_rate_spike", "fraud"), ("degraded_rate", "fraud"),
                       ("latency_p99", "fraud"), ("override_spike", "rule:velocity_burst"),
                       ("override_spike", f"model:{model}/v1")}
    drop = checks[("approval_rate_drop", "fraud")]
    assert drop.details["baseline_rate"] - drop.details["rate"] > 0.2
    assert "approval rate" in drop.summary and "vs baseline" in drop.summary
    assert checks[("latency_p99", "fraud")].details["p99_ms"] == 900.0

    with http_sink() as http:
        sent = process(settings.model_copy(update={"alert_slack_webhook_url": SecretStr(http.url("/slack"))}),
                       [checks[k] for k in sorted(tripped)])
        assert sorted((a.kind, a.status) for a in sent) == sorted((k[0], "firing") for k in tripped)
        assert len(http.bodies("/slack")) == len(tripped)
        assert any(b"override_spike.md" in b for b in http.bodies("/slack"))

    # a quiet window is no verdict, not an all-clear (dead letters need no sample: none is clean)
    quiet = evaluate(settings, now=later + timedelta(hours=3))
    assert quiet and all(c.breached is None for c in quiet if c.kind != "decision_log_dead_letter")
