"""The tripwire watcher: the decision-stream tripwires every ``RISKLOOP_WATCH_INTERVAL_S``, not once a day.

A policy pushed by mistake or a model that turns on every payment shows in the decision stream
within minutes; a daily check finds it the next morning. ``riskloop watch`` (started by
``riskloop up`` beside the stream consumer, ``RISKLOOP_WATCH_SERVICE``) evaluates
:func:`riskloop.monitoring.tripwires.evaluate` over a short recent window
(``RISKLOOP_WATCH_WINDOW_MINUTES``) against the usual baseline, and feeds the checks to the same
incident state machine as every other alert (:func:`riskloop.core.alerts.process`): an incident is
raised after ``RISKLOOP_ALERT_RAISE_AFTER`` consecutive breaching rounds (2 rounds of 60 s: a page
at most two minutes after a breach starts) and, while it is open, further breaches page nobody.

The daily monitor run (the DAG, ``riskloop monitor``) keeps its drift, performance and case
checks, and evaluates the tripwires itself only while no watcher does (:func:`watcher_alive`), so
one alert state is never fed by two windows at once and a deployment without the watcher still
has its daily tripwires.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from riskloop.core import db
from riskloop.core.alerts import STATE_TABLE, Alert, process
from riskloop.core.config import Settings
from riskloop.monitoring import tripwires

log = logging.getLogger(__name__)

# The tripwire kinds the watcher owns; the dead-letter check rides along (same query round).
WATCHED_KINDS = ("approval_rate_drop", "review_rate_spike", "override_spike", "degraded_rate", "latency_p99",
                 "decision_log_dead_letter")
EVALUATED_BY = "watch"  # in each check's details: the alert state row says who judged it last
# A watcher that has not evaluated for this many intervals is gone: the daily run checks again.
ALIVE_INTERVALS = 5


def watch_settings(settings: Settings) -> Settings:
    """The settings of the watcher's rounds: the tripwires over its own short recent window."""
    return settings.model_copy(update={"tripwire_window_minutes": settings.watch_window_minutes})


def watch_once(settings: Settings, now: datetime | None = None,
               baseline: tripwires.BaselineCache | None = None) -> list[Alert]:
    """One round: the tripwires of the window ending ``now`` through the incident state machine."""
    ws = watch_settings(settings)
    checks = [replace(c, details={**c.details, "evaluated_by": EVALUATED_BY})
              for c in tripwires.evaluate(ws, now=now, baseline=baseline)]
    return process(ws, checks)


def run(settings: Settings, stop: threading.Event, rounds: int | None = None) -> int:
    """Evaluate every ``watch_interval_s`` until ``stop`` is set (or ``rounds`` rounds ran); a round
    that fails (the database restarting) is logged and the next one runs on time. Returns the rounds run."""
    interval = settings.watch_interval_s
    log.info("tripwire watcher: every %.0f s over the last %d min against %d h before", interval,
             settings.watch_window_minutes, settings.tripwire_baseline_hours)
    done = 0
    next_at = time.monotonic()
    baseline = tripwires.BaselineCache(timedelta(minutes=settings.watch_baseline_refresh_minutes))
    while not stop.is_set() and (rounds is None or done < rounds):
        try:
            sent = watch_once(settings, baseline=baseline)
            for a in sent:
                log.warning("tripwire watcher: %s", a.title)
        except Exception:  # noqa: BLE001 - the watcher outlives a failed round
            log.exception("tripwire watcher: round failed; next in %.0f s", interval)
        done += 1
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
        if time.monotonic() - next_at > interval:  # fell behind (suspended, very slow round): no burst
            next_at = time.monotonic()
    return done


def watcher_alive(settings: Settings, now: datetime | None = None) -> bool:
    """A watcher evaluated the tripwires within the last ``ALIVE_INTERVALS`` intervals (its rounds
    stamp ``last_evaluated_at`` of their alert state rows)."""
    now = now or datetime.now(UTC)
    since = now - timedelta(seconds=ALIVE_INTERVALS * settings.watch_interval_s)
    with db.connect(settings) as conn:
        if conn.execute("select to_regclass(%s)", (STATE_TABLE,)).fetchone()[0] is None:
            return False
        row = conn.execute(f"select max(last_evaluated_at) from {STATE_TABLE} where kind = any(%s) "
                           "and last_details->>'evaluated_by' = %s", (list(WATCHED_KINDS), EVALUATED_BY)).fetchone()
    return row[0] is not None and row[0] >= since
