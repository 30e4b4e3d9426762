"""The case queue's alerts, as :class:`~riskloop.core.alerts.Check` s for the monitor run (same
hysteresis, state and sinks as every other alert; runbooks ``docs/runbooks/<kind>.md``):

* ``case_sla_breach`` (key ``cases``): more unclosed cases than ``cases_sla_breach_max`` are past
  their due time (the SLA of their priority).
* ``case_queue_growth`` (key ``cases``): in the last ``cases_growth_window_hours`` the queue grew faster
  than it was worked: opened ≥ ``cases_growth_ratio`` × closed and by at least ``cases_growth_min``.

Both read :func:`riskloop.decisions.case_stats.stats`; a warehouse without the case tables gives no check.
"""

from __future__ import annotations

from datetime import datetime

from riskloop.core import db
from riskloop.core.alerts import Check
from riskloop.core.config import Settings
from riskloop.decisions import case_stats
from riskloop.decisions.cases import CASES

KEY = "cases"


def evaluate(settings: Settings, now: datetime | None = None) -> list[Check]:
    with db.connect(settings, autocommit=True) as conn:
        if conn.execute("select to_regclass(%s)", (CASES,)).fetchone()[0] is None:
            return []
        s = case_stats.stats(conn, settings, now)
    return [sla_check(settings, s), growth_check(settings, s)]


def sla_check(settings: Settings, s: dict) -> Check:
    overdue = s["overdue"]
    by_priority = {q["priority"]: q["overdue"] for q in s["queue"] if q["overdue"]}
    return Check(kind="case_sla_breach", key=KEY, breached=overdue > settings.cases_sla_breach_max,
                 summary=f"{overdue} unclosed case(s) past their due time (threshold {settings.cases_sla_breach_max}); "
                         f"by priority: {by_priority or 'none'}; oldest open case "
                         f"{(s['oldest_open_age_s'] or 0) / 3600:.1f} h",
                 details={"overdue": overdue, "overdue_by_priority": by_priority, "unclosed": s["unclosed"],
                          "oldest_open_age_s": s["oldest_open_age_s"], "threshold": settings.cases_sla_breach_max})


def growth_check(settings: Settings, s: dict) -> Check:
    opened, closed = s["opened_in_window"], s["closed_in_window"]
    breached = opened - closed >= settings.cases_growth_min and opened >= settings.cases_growth_ratio * closed
    return Check(kind="case_queue_growth", key=KEY, breached=breached,
                 summary=f"{opened} case(s) opened and {closed} closed in the last {s['flow_window_hours']:g} h "
                         f"(alert at ≥ {settings.cases_growth_ratio:g}× and ≥ {settings.cases_growth_min} more opened); "
                         f"{s['unclosed']} unclosed now",
                 details={"opened": opened, "closed": closed, "unclosed": s["unclosed"],
                          "window_hours": s["flow_window_hours"], "ratio": settings.cases_growth_ratio,
                          "min": settings.cases_growth_min, "depth_by_priority": s["depth_by_priority"]})
