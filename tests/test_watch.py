"""The tripwire watcher as it runs: a real ``riskloop watch`` process on its own warehouse, decisions
written to the log while it runs, pages to a real HTTP sink.

A healthy stream pages nobody; the same stream decided by a shifted policy (much lower thresholds:
far fewer approvals) pages, once per tripwire, however many rounds the breach lasts.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from conftest import stop_process
from fixtures_marts import isolated_settings
from psycopg.types.json import Jsonb
from sinks import http_sink

from riskloop.core.config import Settings
from riskloop.decisions import log as decision_log
from riskloop.decisions.policy import Policy, policy_by_id

HEALTHY = policy_by_id("fraud-v1")
SHIFTED = Policy.model_validate({**HEALTHY.model_dump(exclude={"digest"}), "version": 98,
                                 "thresholds": {"step_up": 0.02, "review": 0.05, "deny": 0.6}})


def decided(policy: Policy, rng: random.Random, at: datetime) -> dict[str, Any]:
    score = rng.random() ** 4  # most payments look clean: fraud-v1 allows ~85 %
    request = {"transaction_id": uuid.uuid4().hex, "card_token": "tok", "customer_id": "C", "terminal_id": "T",
               "amount_minor": rng.randrange(100, 40_000), "currency": "EUR", "timestamp": at.isoformat()}
    decision, rules = policy.decide(score, request, {"customer_nb_tx_1d": 1.0}, {})
    return {"decision_id": uuid.uuid4(), "request_id": request["transaction_id"], "decided_at": at,
            "model_name": "riskloop-fraud", "model_version": "1", "model_alias": "champion", "score": score,
            "decision": decision, "reasons": [], "rules": rules, "features": {"customer_nb_tx_1d": 1.0},
            "feature_timestamps": {}, "request": request, "latency_ms": 3.0, "degraded": False, "product": "fraud",
            "policy_version": policy.id, "signals": {}, "serving_mode": "champion", "shadow": None}


def write(settings: Settings, rows: list[dict[str, Any]]) -> None:
    from serving.decision_log import INSERT

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn, conn.cursor() as cur:
        cur.executemany(INSERT, [tuple(Jsonb(r[c]) if c in decision_log.JSON_COLUMNS and r[c] is not None else r[c]
                                       for c in decision_log.COLUMNS) for r in rows])


class Load(threading.Thread):
    """Decisions of ``policy`` written to the log as they are made, ``rate`` per second."""

    def __init__(self, settings: Settings, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate, self.policy = settings, rate, HEALTHY
        self.stop = threading.Event()
        self.rng = random.Random(3)

    def run(self) -> None:
        while not self.stop.is_set():
            now = datetime.now(UTC)
            write(self.settings, [decided(self.policy, self.rng, now) for _ in range(max(1, int(self.rate / 4)))])
            self.stop.wait(0.25)


def pages(sink, kind: str | None = None) -> list[bytes]:
    return [b for b in sink.bodies("/slack") if kind is None or f"[FIRING] {kind} ".encode() in b]


def state(settings: Settings) -> dict[tuple[str, str], tuple[str, str | None, int]]:
    """(status, who judged last, consecutive clean rounds) per alert kind and key."""
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        return {(k, key): (s, by, clean) for k, key, s, by, clean in conn.execute(
            "select kind, key, status, last_details->>'evaluated_by', consecutive_clean from monitoring.alert_state")}


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def test_watcher_pages_a_shifted_policy_once_and_a_healthy_stream_never(stack_env: dict[str, str]) -> None:
    from riskloop.monitoring.watch import watcher_alive

    settings = isolated_settings("riskloop_t_watch")
    # The baseline: the healthy policy over the last hour (before the watcher's 1-minute window).
    rng = random.Random(1)
    now = datetime.now(UTC)
    write(settings, [decided(HEALTHY, rng, now - timedelta(minutes=2) - timedelta(seconds=7 * i)) for i in range(500)])
    load = Load(settings, rate=40)
    with http_sink() as sink:
        env = {**os.environ, **settings.environ(), "RISKLOOP_WATCH_INTERVAL_S": "1", "RISKLOOP_WATCH_WINDOW_MINUTES": "1",
               "RISKLOOP_TRIPWIRE_BASELINE_HOURS": "2", "RISKLOOP_ALERT_MIN_SAMPLES": "200", "RISKLOOP_ALERT_RAISE_AFTER": "2",
               "RISKLOOP_ALERT_SLACK_WEBHOOK_URL": sink.url("/slack"), "RISKLOOP_ALERT_RETRIES": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "riskloop", "watch"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        load.start()
        try:
            # Healthy: the watcher judges round after round (its verdicts in the alert state), pages nobody.
            def judged_healthy(rounds: int) -> bool:
                s = state(settings).get(("approval_rate_drop", "fraud"))
                return s is not None and s[:2] == ("ok", "watch") and s[2] >= rounds

            wait_for(lambda: judged_healthy(3), 180, "the watcher judged the healthy stream clean")
            wait_for(lambda: judged_healthy(8), 60, "five more clean rounds")
            assert pages(sink) == [], pages(sink)
            # the daily run leaves the tripwires to the running watcher
            assert watcher_alive(settings.model_copy(update={"watch_interval_s": 1.0}))

            load.policy = SHIFTED  # the shifted policy goes live
            wait_for(lambda: pages(sink, "approval_rate_drop"), 120, "a page for the approval-rate drop")
            paged = state(settings)
            assert paged[("approval_rate_drop", "fraud")][0] == "firing"
            # the breach goes on for more rounds: nobody is paged again for it
            later = time.monotonic()
            wait_for(lambda: time.monotonic() - later > 8, 30, "rounds")
            assert state(settings)[("approval_rate_drop", "fraud")][0] == "firing"
            assert len(pages(sink, "approval_rate_drop")) == 1
            assert all(len(pages(sink, kind)) <= 1 for kind in ("review_rate_spike", "degraded_rate", "latency_p99"))
            assert b"approval rate" in pages(sink, "approval_rate_drop")[0]
        finally:
            load.stop.set()
            load.join(10)
            stop_process(proc)
    # With the watcher gone (its last round older than five of its intervals), the daily run checks again.
    time.sleep(0.1)
    assert not watcher_alive(settings.model_copy(update={"watch_interval_s": 0.01}))


def test_riskloop_up_runs_the_watcher_and_down_stops_it(stack_env: dict[str, str], tmp_path) -> None:
    from riskloop.ops import stack

    settings = isolated_settings("riskloop_t_watch_up").model_copy(update={
        "home": tmp_path / "home", "mlflow_tracking_uri": Settings().tracking_uri, "stream_service": False,
        "watch_service": True})
    try:
        info = stack.up(settings)
        assert (info["watch"], info["watch_managed"]) == ("up", True), info
        pid = (settings.run_dir / "watch.pid").read_text()
        assert stack.up(settings)["watch"] == "up"  # idempotent: the same process
        assert (settings.run_dir / "watch.pid").read_text() == pid
        assert "tripwire watcher: every 60 s" in (settings.log_dir / "watch.log").read_text()
        # it logs in as the governance role: its environment says so, and its first round wrote its verdicts
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{pid.strip()}/environ").read_text().split("\0") if "=" in item)
        assert environ.get("RISKLOOP_DB_ROLE") == "governance"
        wait_for(lambda: any(by == "watch" for _, by, _ in state(settings).values()), 60, "the watcher's first round")
    finally:
        stack.down(settings)
    assert stack.status(settings)["watch"] == "down"


def test_a_cached_baseline_gives_the_same_checks_until_it_is_read_again(stack_env: dict[str, str]) -> None:
    from riskloop.monitoring.tripwires import BaselineCache, evaluate

    settings = isolated_settings("riskloop_t_watch_baseline").model_copy(update={
        "alert_min_samples": 50, "tripwire_window_minutes": 10, "tripwire_baseline_hours": 2})
    end = datetime(2002, 5, 1, 12, tzinfo=UTC)
    rng = random.Random(5)
    write(settings, [decided(HEALTHY, rng, end - timedelta(minutes=11, seconds=30 * i)) for i in range(200)])
    write(settings, [decided(SHIFTED, rng, end - timedelta(seconds=5 * i + 1)) for i in range(100)])

    def figures(checks) -> list[tuple]:
        return [(c.kind, c.key, c.breached, c.summary, c.details) for c in checks]

    cache = BaselineCache(timedelta(minutes=2))
    cached = evaluate(settings, now=end, baseline=cache)
    assert figures(cached) == figures(evaluate(settings, now=end))
    assert ("approval_rate_drop", "fraud") in {(c.kind, c.key) for c in cached if c.breached}

    def baseline_rate(checks) -> float:
        return next(c.details["baseline_rate"] for c in checks if c.kind == "approval_rate_drop")

    # more decisions in the baseline window: a round within the cache's age does not read them...
    write(settings, [decided(SHIFTED, rng, end - timedelta(minutes=20, seconds=i)) for i in range(400)])
    assert baseline_rate(evaluate(settings, now=end + timedelta(minutes=1), baseline=cache)) == baseline_rate(cached)
    # ...the first round after it does
    fresh = evaluate(settings, now=end + timedelta(minutes=2), baseline=cache)
    assert baseline_rate(fresh) < baseline_rate(cached) - 0.1
    assert cache.read_at == end + timedelta(minutes=2)
    assert figures(fresh) == figures(evaluate(settings, now=end + timedelta(minutes=2)))
