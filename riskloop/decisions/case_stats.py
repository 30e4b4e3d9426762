"""How the case queue is doing, for leads: ``riskloop cases stats``, serving's ``/metrics`` and the
case alerts (:mod:`riskloop.monitoring.case_checks`) all read these figures from here.

* queue depth by priority and status (unclosed cases), the age of the oldest unclosed case, how many
  are past their due time (SLA);
* time to disposition (opened → closed: median and p90) over the cases closed in
  ``cases_stats_window_days``;
* review precision: of the ``review`` decisions in those cases closed ``fraud_confirmed`` or
  ``legitimate`` (``inconclusive`` says nothing), the share confirmed as fraud;
* analyst agreement with the model: of those cases, the share where the model's highest score was on
  the analyst's side of ``cases_model_fraud_score``;
* opened and closed in the last ``cases_growth_window_hours`` (is the queue worked as fast as it grows).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from riskloop.core.config import Settings
from riskloop.decisions.cases import CASES, EVENTS
from riskloop.decisions.log import TABLE as DECISION_LOG

_QUEUE = f"""
select priority, priority_rank, status, count(*), min(opened_at), count(*) filter (where due_at < %(now)s)
from {CASES} where status <> 'closed' group by 1, 2, 3 order by 2, 3
"""
_CLOSED = f"""
select count(*),
       percentile_cont(0.5) within group (order by extract(epoch from closed_at - opened_at)),
       percentile_cont(0.9) within group (order by extract(epoch from closed_at - opened_at)),
       count(*) filter (where disposition = 'fraud_confirmed'),
       count(*) filter (where disposition = 'legitimate'),
       count(*) filter (where disposition = 'inconclusive'),
       count(*) filter (where disposition <> 'inconclusive' and max_score is not null),
       count(*) filter (where (disposition = 'fraud_confirmed' and max_score >= %(cut)s)
                           or (disposition = 'legitimate' and max_score < %(cut)s))
from {CASES} where status = 'closed' and closed_at >= %(since)s
"""
_PRECISION = f"""
select count(*) filter (where c.disposition = 'fraud_confirmed'), count(*)
from {CASES} c join {EVENTS} e on e.case_id = c.case_id and e.kind = 'decision_added'
join {DECISION_LOG} l on l.decision_id = e.decision_id
where c.status = 'closed' and c.closed_at >= %(since)s and c.disposition in ('fraud_confirmed', 'legitimate')
  and l.decision = 'review'
"""
_FLOW = f"""
select count(*) filter (where kind = 'opened'), count(*) filter (where kind = 'closed')
from {EVENTS} where at >= %(flow_since)s and kind in ('opened', 'closed')
"""


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def stats(conn: psycopg.Connection, settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """The queue's figures now (see the module docstring); JSON-ready."""
    now = now or datetime.now(UTC)
    params = {"now": now, "since": now - timedelta(days=settings.cases_stats_window_days),
              "flow_since": now - timedelta(hours=settings.cases_growth_window_hours),
              "cut": settings.cases_model_fraud_score}
    queue: list[dict[str, Any]] = []
    oldest: datetime | None = None
    for priority, rank, status, n, first, overdue in conn.execute(_QUEUE, params).fetchall():
        queue.append({"priority": priority, "rank": rank, "status": status, "cases": n, "overdue": overdue,
                      "oldest_age_s": (now - first).total_seconds()})
        oldest = first if oldest is None or first < oldest else oldest
    n_closed, p50, p90, n_fraud, n_legit, n_inconclusive, n_judged, n_agree = conn.execute(_CLOSED, params).fetchone()
    confirmed, reviewed = conn.execute(_PRECISION, params).fetchone()
    opened, closed = conn.execute(_FLOW, params).fetchone()
    return {
        "at": now.isoformat(),
        "queue": queue,
        "depth_by_priority": {p: sum(q["cases"] for q in queue if q["priority"] == p)
                              for p in dict.fromkeys(q["priority"] for q in queue)},
        "unclosed": sum(q["cases"] for q in queue),
        "overdue": sum(q["overdue"] for q in queue),
        "oldest_open_age_s": (now - oldest).total_seconds() if oldest else None,
        "window_days": settings.cases_stats_window_days,
        "closed": n_closed,
        "dispositions": {"fraud_confirmed": n_fraud, "legitimate": n_legit, "inconclusive": n_inconclusive},
        "time_to_disposition_p50_s": p50,
        "time_to_disposition_p90_s": p90,
        "review_decisions_judged": reviewed,
        "review_precision": _share(confirmed, reviewed),
        "model_agreement": _share(n_agree, n_judged),
        "flow_window_hours": settings.cases_growth_window_hours,
        "opened_in_window": opened,
        "closed_in_window": closed,
    }
