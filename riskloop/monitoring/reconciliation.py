"""Settlement reconciliation breaks → on-call: the ``settlement_breaks`` check.

``marts.settlement_reconciliation`` (dbt) gives every line of the processors' settlement files a
status against the payment fact. Three statuses are breaks, money riskloop cannot account for:
``amount_mismatch`` (settled a different amount than captured), ``unknown_payment`` (settled a
payment never received, live or in a file) and ``not_captured`` (settled a payment whose capture
never arrived). ``currency_mismatch`` is not counted: it is a finance question (FX settlement), not
a lost or altered payment.

One check per processor over the lines of its newest ``RISKLOOP_SETTLEMENT_BREAK_FILES`` settlement
files (by arrival): breached when the share of break lines exceeds ``RISKLOOP_SETTLEMENT_BREAK_RATE``.
Files, not a wall-clock window, so a backfill or a processor that delivers late is judged on what it
delivered; fewer than ``RISKLOOP_SETTLEMENT_BREAK_MIN_LINES`` lines give no verdict (a quiet processor
neither pages nor resolves). The incident state machine (hysteresis, sinks, runbook
``docs/runbooks/settlement_breaks.md``) is :func:`riskloop.core.alerts.process`'s.
"""

from __future__ import annotations

import logging

from riskloop.core import db
from riskloop.core.alerts import Alert, Check, process
from riskloop.core.config import Settings

log = logging.getLogger(__name__)

KIND = "settlement_breaks"
MART = "marts.settlement_reconciliation"
BREAKS = ("amount_mismatch", "unknown_payment", "not_captured")

_SQL = f"""
with files as (
    select processor, source_file, max(arrived_at) as arrived_at,
           row_number() over (partition by processor order by max(arrived_at) desc, source_file desc) as recency
    from {MART}
    group by processor, source_file
)
select r.processor, count(distinct r.source_file) as n_files, count(*) as n_lines,
       count(*) filter (where r.reconciliation_status = 'amount_mismatch') as amount_mismatch,
       count(*) filter (where r.reconciliation_status = 'unknown_payment') as unknown_payment,
       count(*) filter (where r.reconciliation_status = 'not_captured') as not_captured,
       min(f.arrived_at) as first_arrived_at, max(f.arrived_at) as last_arrived_at,
       (array_agg(r.source_file || ':' || r.line_no || ' ' || r.payment_id || ' ' || r.reconciliation_status
                  order by f.arrived_at desc, r.source_file, r.line_no)
            filter (where r.reconciliation_status = any(%(breaks)s)))[1:10] as examples
from {MART} r
join files f on f.processor = r.processor and f.source_file = r.source_file
where f.recency <= %(files)s
group by r.processor
order by r.processor
"""


def evaluate(settings: Settings) -> list[Check]:
    """One ``settlement_breaks`` check per processor with settlement lines (none before the mart exists)."""
    with db.connect(settings) as conn:
        if conn.execute("select to_regclass(%s)", (MART,)).fetchone()[0] is None:
            log.info("no %s yet (dbt has not built it): no settlement check", MART)
            return []
        cur = conn.execute(_SQL, {"files": settings.settlement_break_files, "breaks": list(BREAKS)})
        cols = [c.name for c in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return [_check(settings, r) for r in rows]


def _check(settings: Settings, r: dict) -> Check:
    n, counts = r["n_lines"], {b: r[b] for b in BREAKS}
    breaks = sum(counts.values())
    rate = breaks / n if n else 0.0
    limit = settings.settlement_break_rate
    details = {"processor": r["processor"], "files": r["n_files"], "lines": n, "breaks": breaks, "break_rate": rate,
               "threshold": limit, **counts, "first_file_arrived_at": r["first_arrived_at"].isoformat(),
               "last_file_arrived_at": r["last_arrived_at"].isoformat(), "examples": r["examples"] or []}
    scope = f"{r['processor']}: {breaks}/{n} settlement lines broken over its last {r['n_files']} file(s)"
    if n < settings.settlement_break_min_lines:
        return Check(KIND, r["processor"], None, f"{scope}: fewer than {settings.settlement_break_min_lines} "
                     "lines, not judged", details)
    parts = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    summary = f"{scope} ({rate:.2%}, threshold {limit:.2%})" + (f": {parts}" if parts else "")
    return Check(KIND, r["processor"], rate > limit, summary, details)


def check_settlements(settings: Settings) -> list[Alert]:
    """Evaluate the settlement checks and run them through the alert state machine and sinks; the
    alerts raised or resolved. Called by the ingest DAG after dbt and by ``riskloop check settlements``."""
    return process(settings, evaluate(settings))
