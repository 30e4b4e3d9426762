"""Tripwires on the decision stream: what the decisions themselves say, before any label arrives.

Each monitor run compares a recent window (``RISKLOOP_TRIPWIRE_WINDOW_MINUTES`` up to *now*) with
the baseline window just before it (``RISKLOOP_TRIPWIRE_BASELINE_HOURS``), per product, from
``serving.decision_log`` and ``serving.decision_overrides``, and returns one
:class:`~riskloop.core.alerts.Check` per alert kind and key; :func:`riskloop.core.alerts.process` turns them
into incidents with the same hysteresis and sinks as drift.

* ``approval_rate_drop`` (per product): approving share (``allow`` / ``approve``) fell by at least
  ``tripwire_approval_drop``, absolute.
* ``review_rate_spike`` (per product): manual-review share (``review`` / ``refer``) reached
  ``tripwire_review_ratio`` × baseline *and* is ``tripwire_review_min_rate`` above it (a ratio
  alone would page on 0.1 % → 0.2 %).
* ``override_spike`` (per ``rule:<id>`` and ``model:<name>/v<version>``): the share of its recent
  decisions that reviewers overrode reached ``tripwire_override_ratio`` × baseline, with at least
  ``tripwire_override_min_count`` overrides.
* ``degraded_rate`` (per product): share of recent decisions made without a model score.
* ``latency_p99`` (per product): p99 of the logged ``latency_ms``.
* ``decision_log_dead_letter`` (key ``decision_log``): the decision-log writer set rows aside in
  ``serving.decision_log_dead_letters`` in the recent window (decisions answered but not in the log).

A window with fewer than ``alert_min_samples`` decisions gives no verdict (``breached=None``),
so a quiet night neither pages nor resolves anything; dead letters need no sample: one is one too
many, and a recent window without any is clean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from riskloop.core import db
from riskloop.core.alerts import Check
from riskloop.core.config import Settings

log = logging.getLogger(__name__)

APPROVING = ("allow", "approve")
REVIEWING = ("review", "refer")

_PRODUCT_SQL = """
select product, decided_at >= %(split)s as recent, count(*) as n,
       count(*) filter (where decision = any(%(approving)s)) as n_approved,
       count(*) filter (where decision = any(%(reviewing)s)) as n_review,
       count(*) filter (where degraded) as n_degraded,
       percentile_cont(0.99) within group (order by latency_ms) as p99_ms
from serving.decision_log
where decided_at >= %(start)s and decided_at < %(end)s
group by 1, 2
"""

_OVERRIDE_SQL = """
with d as (
    select l.decision_id, l.model_name, l.model_version, l.rules, l.decided_at >= %(split)s as recent,
           exists (select 1 from serving.decision_overrides o where o.decision_id = l.decision_id) as overridden
    from serving.decision_log l
    where l.decided_at >= %(start)s and l.decided_at < %(end)s
)
select 'model:' || coalesce(model_name, '-') || '/v' || coalesce(model_version, '-') as key, recent,
       count(*) as n, count(*) filter (where overridden) as n_over
from d group by 1, 2
union all
select 'rule:' || r.rule, recent, count(*), count(*) filter (where overridden)
from d cross join lateral jsonb_array_elements_text(d.rules) as r(rule) group by 1, 2
"""


_DEAD_LETTER_SQL = """
select count(*), min(dead_lettered_at), max(dead_lettered_at) from serving.decision_log_dead_letters
where dead_lettered_at >= %(split)s and dead_lettered_at < %(end)s
"""


def _windows(settings: Settings, now: datetime) -> dict[str, Any]:
    split = now - timedelta(minutes=settings.tripwire_window_minutes)
    return {"end": now, "split": split, "start": split - timedelta(hours=settings.tripwire_baseline_hours)}


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass
class BaselineCache:
    """The baseline window's figures, kept for ``max_age`` between evaluations (the watcher's rounds,
    :mod:`riskloop.monitoring.watch`): the baseline spans days and moves by a minute a round, so
    scanning it every round would read a week of the log each minute for the same answer. A reused
    baseline ends where the recent window ended when it was read (a few minutes of decisions then
    count in neither window: nothing to a rate over days)."""

    max_age: timedelta
    read_at: datetime | None = None
    start: datetime | None = None
    products: list[tuple] = field(default_factory=list)
    overrides: list[tuple] = field(default_factory=list)

    def stale(self, now: datetime) -> bool:
        return self.read_at is None or not timedelta(0) <= now - self.read_at < self.max_age


def evaluate(settings: Settings, now: datetime | None = None, baseline: BaselineCache | None = None) -> list[Check]:
    """The tripwire checks of the windows ending at ``now`` (default: the current time); with
    ``baseline``, the baseline's figures come from (and refresh) that cache."""
    now = now or datetime.now(UTC)
    params = {**_windows(settings, now), "approving": list(APPROVING), "reviewing": list(REVIEWING)}
    with db.connect(settings) as conn:
        have_log, have_overrides, have_dead = conn.execute(
            "select to_regclass('serving.decision_log') is not null, "
            "to_regclass('serving.decision_overrides') is not null, "
            "to_regclass('serving.decision_log_dead_letters') is not null").fetchone()
        if not have_log:
            log.info("tripwires: serving.decision_log does not exist yet; nothing to check")
            return []
        if baseline is None:
            products = conn.execute(_PRODUCT_SQL, params).fetchall()
            overrides = conn.execute(_OVERRIDE_SQL, params).fetchall() if have_overrides else []
            baseline_start = params["start"]
        else:
            recent = {**params, "start": params["split"]}  # rows of the recent window only
            products = conn.execute(_PRODUCT_SQL, recent).fetchall()
            overrides = conn.execute(_OVERRIDE_SQL, recent).fetchall() if have_overrides else []
            if baseline.stale(now):
                before = {**params, "end": params["split"]}  # rows of the baseline window only
                baseline.products = conn.execute(_PRODUCT_SQL, before).fetchall()
                baseline.overrides = conn.execute(_OVERRIDE_SQL, before).fetchall() if have_overrides else []
                baseline.read_at, baseline.start = now, params["start"]
            products, overrides = products + baseline.products, overrides + baseline.overrides
            baseline_start = baseline.start
        dead = conn.execute(_DEAD_LETTER_SQL, params).fetchone() if have_dead else None
    window = {"recent_start": params["split"].isoformat(), "end": now.isoformat(),
              "baseline_start": baseline_start.isoformat()}
    checks: list[Check] = []
    stats: dict[str, dict[bool, tuple]] = {}
    for product, recent, *rest in products:
        stats.setdefault(product, {})[recent] = tuple(rest)
    for product in sorted(stats):
        checks.extend(_product_checks(settings, product, stats[product], window))
    groups: dict[str, dict[bool, tuple[int, int]]] = {}
    for key, recent, n, n_over in overrides:
        groups.setdefault(key, {})[recent] = (n, n_over)
    for key in sorted(groups):
        checks.append(_override_check(settings, key, groups[key], window))
    if dead is not None:
        checks.append(_dead_letter_check(settings, *dead, window))
    return checks


def _dead_letter_check(settings: Settings, n: int, first: datetime | None, last: datetime | None,
                       window: dict) -> Check:
    details = {"n_recent": n, "first_at": first.isoformat() if first else None,
               "last_at": last.isoformat() if last else None, "table": "serving.decision_log_dead_letters", **window}
    if not n:
        return Check("decision_log_dead_letter", "decision_log", False,
                     f"no decision-log rows set aside in the last {settings.tripwire_window_minutes} min", details)
    return Check("decision_log_dead_letter", "decision_log", True,
                 f"{n} decision(s) answered but refused by the decision log in the last "
                 f"{settings.tripwire_window_minutes} min, set aside in serving.decision_log_dead_letters "
                 f"(last at {last.isoformat() if last else '?'})", details)


def _product_checks(settings: Settings, product: str, by_window: dict[bool, tuple], window: dict) -> list[Check]:
    empty = (0, 0, 0, 0, None)
    n, n_appr, n_rev, n_deg, p99 = by_window.get(True, empty)
    bn, b_appr, b_rev, _, _ = by_window.get(False, empty)
    enough, base_enough = n >= settings.alert_min_samples, bn >= settings.alert_min_samples
    min_n = settings.alert_min_samples
    base = {"product": product, "n_recent": n, "n_baseline": bn, **window}
    checks = []

    appr, b_appr_r = _rate(n_appr, n), _rate(b_appr, bn)
    if enough and base_enough:
        drop = b_appr_r - appr
        checks.append(Check("approval_rate_drop", product, drop >= settings.tripwire_approval_drop,
                            f"{product} approval rate {appr:.1%} vs baseline {b_appr_r:.1%} (drop {drop:+.1%}; "
                            f"trips at {settings.tripwire_approval_drop:.1%}) over {n} recent decisions",
                            {**base, "rate": appr, "baseline_rate": b_appr_r}))
    else:
        checks.append(Check("approval_rate_drop", product, None,
                            f"{product}: {n} recent / {bn} baseline decisions (< {min_n}): not judged", base))

    rev, b_rev_r = _rate(n_rev, n), _rate(b_rev, bn)
    if enough and base_enough:
        tripped = rev >= settings.tripwire_review_ratio * b_rev_r and rev - b_rev_r >= settings.tripwire_review_min_rate
        checks.append(Check("review_rate_spike", product, tripped,
                            f"{product} review rate {rev:.1%} vs baseline {b_rev_r:.1%} (x{_ratio(rev, b_rev_r)}; "
                            f"trips at x{settings.tripwire_review_ratio:g} and "
                            f"+{settings.tripwire_review_min_rate:.1%}) over {n} recent decisions",
                            {**base, "rate": rev, "baseline_rate": b_rev_r}))
    else:
        checks.append(Check("review_rate_spike", product, None,
                            f"{product}: {n} recent / {bn} baseline decisions (< {min_n}): not judged", base))

    deg = _rate(n_deg, n)
    checks.append(Check("degraded_rate", product, (deg >= settings.tripwire_degraded_rate) if enough else None,
                        f"{product} degraded decisions {deg:.1%} of {n} recent (trips at "
                        f"{settings.tripwire_degraded_rate:.1%})" if enough else
                        f"{product}: {n} recent decisions (< {min_n}): not judged", {**base, "rate": deg}))
    has_p99 = enough and p99 is not None
    checks.append(Check("latency_p99", product, (p99 > settings.tripwire_latency_p99_ms) if has_p99 else None,
                        f"{product} latency p99 {p99:.0f} ms over {n} recent decisions (trips above "
                        f"{settings.tripwire_latency_p99_ms:g} ms)" if has_p99 else
                        f"{product}: {n} recent decisions with a latency (< {min_n}): not judged",
                        {**base, "p99_ms": p99}))
    return checks


def _override_check(settings: Settings, key: str, by_window: dict[bool, tuple[int, int]], window: dict) -> Check:
    n, n_over = by_window.get(True, (0, 0))
    bn, b_over = by_window.get(False, (0, 0))
    rate, b_rate = _rate(n_over, n), _rate(b_over, bn) or 0.0
    details = {"key": key, "n_recent": n, "overrides_recent": n_over, "n_baseline": bn, "overrides_baseline": b_over,
               "rate": rate, "baseline_rate": b_rate, **window}
    if not n:
        return Check("override_spike", key, None, f"{key}: no recent decisions", details)
    tripped = n_over >= settings.tripwire_override_min_count and rate >= settings.tripwire_override_ratio * b_rate
    return Check("override_spike", key, tripped,
                 f"{key}: {n_over} of {n} recent decisions overridden ({rate:.1%}) vs baseline {b_rate:.1%} "
                 f"(x{_ratio(rate, b_rate)}; trips at x{settings.tripwire_override_ratio:g} with >= "
                 f"{settings.tripwire_override_min_count} overrides)", details)


def _ratio(a: float, b: float) -> str:
    return "inf" if not b else f"{a / b:.1f}"
