"""The canary phase of a challenger: live traffic, its promotion gate, and automatic rollback.

**State.** ``governance.canary_state`` is an append-only history (the database refuses UPDATE,
DELETE and TRUNCATE): each row is one change of a model's canary (``start``, ``stop``,
``rollback``, ``promoted``) with the mode (``canary`` | ``shadow`` | ``off``), the share of traffic,
the challenger and champion versions it is about, and its minimum time and volume. The *current*
state is the model's latest row; serving reads it with its poller (never per request) and swaps an
immutable snapshot, so ``riskloop canary start|stop`` and a rollback change the share of every
serving process within a poll, without a restart.

**Evidence.** Everything is computed from ``serving.decision_log``, the one record all serving
processes share: over the canary's window, per arm (the decisions the challenger made, or was
routed and failed on; the champion's), the p99 latency, the error + degraded rate, the PSI of
the challenger's scores against the champion's (bins at the champion's score quantiles), and the
rate of decisions against the customer (the product's, :mod:`riskloop.models.products`: fraud
review/deny, credit decline/refer); the gate also reports each arm's outcomes where their labels have
matured (frauds, defaults). One code path for both products' models. A canary
arm is small (5 % of traffic), and the p99 of a few hundred decisions is their second or third
slowest: one cold first request or one pause would decide it. The latency bounds therefore judge a
one-sided 95 % lower confidence bound of the challenger's p99 (an order statistic, exact and
distribution-free: :func:`quantile_lower_rank`): the challenger is held slower only when its
decisions show it, and the bound converges to the p99 itself as decisions accrue.
:func:`gate` turns it into the promotion gate's verdict; :func:`watch_once` into tripwires.

**Rollback.** :func:`watch_once` trips when a *hard* bound is crossed (PSI, error rate, latency)
and then, under a per-model advisory lock and only if that canary is still the current state,
appends a ``rollback`` row (share 0), moves ``@challenger`` back to the champion's version (the
resting state: training leaves champion and challenger on the same version until a new one
arrives), tags the version and sends a ``canary_rollback`` alert. The watchdog runs inside each
serving process (its poller, once per ``canary_watch_interval_s``) and can run as
``riskloop canary watch``: because it reads the shared log and the rollback is conditional and
locked, any number of watchers are correct together (the first rolls back, the others see the
``rollback`` row), and a process that dies takes no canary state with it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.models.products import Product, product_of

log = logging.getLogger(__name__)

SCHEMA = "governance"
TABLE = f"{SCHEMA}.canary_state"
MODES = ("off", "canary", "shadow")
EVENTS = ("start", "stop", "rollback", "promoted")
CHAMPION, CHALLENGER = "champion", "challenger"

_COLS = ("state_id", "changed_at", "model_name", "event", "mode", "share", "canary_id", "started_at",
         "challenger_version", "champion_version", "min_minutes", "min_decisions", "reason", "evidence",
         "changed_by")


class CanaryError(RuntimeError):
    """A canary command that cannot be carried out (no challenger, nothing running...)."""


@dataclass(frozen=True)
class CanaryState:
    """One row of ``governance.canary_state``: the model's canary as of ``changed_at``."""

    state_id: str
    changed_at: datetime
    model_name: str
    event: str
    mode: str
    share: float
    canary_id: str
    started_at: datetime
    challenger_version: str | None
    champion_version: str | None
    min_minutes: float
    min_decisions: int
    reason: str
    evidence: dict[str, Any]
    changed_by: str

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changed_at"], out["started_at"] = self.changed_at.isoformat(), self.started_at.isoformat()
        return out


def _row(r: tuple) -> CanaryState:
    d = dict(zip(_COLS, r, strict=True))
    d["state_id"], d["canary_id"] = str(d["state_id"]), str(d["canary_id"])
    return CanaryState(**d)


def current(conn, model_name: str) -> CanaryState | None:
    """The model's latest canary row (``None``: never had a canary). One indexed read: serving's poller."""
    r = conn.execute(f"select {', '.join(_COLS)} from {TABLE} where model_name = %s "
                     "order by changed_at desc limit 1", (model_name,)).fetchone()
    return None if r is None else _row(r)


def current_state(settings: Settings, model_name: str) -> CanaryState | None:
    with db.connect(settings) as conn:
        if conn.execute("select to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
            return None
        return current(conn, model_name)


def _lock(conn, model_name: str) -> None:
    conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"riskloop.canary:{model_name}",))


def service_actor(settings: Settings) -> str:
    """Who a process acting on its own records (the tripwire watchdog in serving or ``riskloop canary
    watch``, a job given no caller): the service principal of its key (``RISKLOOP_API_KEY``; in local mode
    the local service's, as DAG runs, :mod:`riskloop.ops.dag_identity`). A rollback must happen even when
    that key is missing or refused, so it is then recorded as ``unauthenticated:<user@host>``: visibly no
    principal, never an operating-system user passed off as one."""
    from riskloop.core.identity import Forbidden, IdentityError, cli_key, cli_principal

    if cli_key(settings) is None:
        log.error("RISKLOOP_API_KEY is not set: canary changes of this process are recorded without a principal")
    else:
        try:
            return cli_principal(settings, "run_canary").actor
        except (IdentityError, Forbidden) as exc:
            log.error("canary changes of this process are recorded without a principal: %s", exc)
    return f"unauthenticated:{db.who()}"


def _append(conn, base: CanaryState | None, **values: Any) -> CanaryState:
    """Insert a new state row (fields not given are carried over from ``base``; ``changed_by`` is required:
    the principal who acted)."""
    from psycopg.types.json import Jsonb

    if not values.get("changed_by"):
        raise ValueError("a canary state row needs its actor (changed_by)")
    row = {**(asdict(base) if base else {}), **values, "state_id": str(uuid.uuid4())}
    row.pop("changed_at", None)
    cols = [c for c in _COLS if c != "changed_at"]
    params = [Jsonb(row[c]) if c == "evidence" else row[c] for c in cols]
    r = conn.execute(f"insert into {TABLE} ({', '.join(cols)}) values ({', '.join(['%s'] * len(cols))}) "
                     f"returning {', '.join(_COLS)}", params).fetchone()
    return _row(r)


def _aliases(settings: Settings, model_name: str) -> tuple[str | None, str | None]:
    """(champion, challenger) versions now."""
    from mlflow.exceptions import MlflowException

    from riskloop.models.registry import mlflow_client

    client = mlflow_client(settings.tracking_uri)
    out = []
    for alias in (CHAMPION, CHALLENGER):
        try:
            out.append(str(client.get_model_version_by_alias(model_name, alias).version))
        except MlflowException:
            out.append(None)
    return out[0], out[1]


def start(settings: Settings, model_name: str, *, share: float | None = None, mode: str = "canary",
          min_minutes: float | None = None, min_decisions: int | None = None,
          reason: str = "canary started", actor: str | None = None) -> CanaryState:
    """Start a canary (or shadow) phase for the current ``@challenger`` of ``model_name``.

    The share, minimum time and minimum volume default to Settings (``RISKLOOP_CANARY_*``) and are
    stored on the row, so the gate later judges the canary by the terms it was started with. ``actor``:
    the principal who starts it (recorded as ``changed_by``)."""
    if mode not in ("canary", "shadow"):
        raise CanaryError(f"mode must be 'canary' or 'shadow', not {mode!r}")
    share = settings.canary_share if share is None else share
    if not 0 < share <= 1:
        raise CanaryError(f"share must be in (0, 1], got {share}")
    champion, challenger = _aliases(settings, model_name)
    if challenger is None or champion is None:
        raise CanaryError(f"{model_name} needs both @champion and @challenger for a canary "
                          f"(champion v{champion}, challenger v{challenger})")
    if challenger == champion:
        raise CanaryError(f"{model_name}: @challenger is the champion (v{champion}); nothing to canary")
    with db.connect(settings) as conn:
        _lock(conn, model_name)
        now = conn.execute("select clock_timestamp()").fetchone()[0]
        cid = str(uuid.uuid4())
        state = _append(conn, None, model_name=model_name, event="start", mode=mode, share=share if mode == "canary"
                        else 1.0, canary_id=cid, started_at=now, challenger_version=challenger,
                        champion_version=champion,
                        min_minutes=settings.canary_min_minutes if min_minutes is None else min_minutes,
                        min_decisions=settings.canary_min_decisions if min_decisions is None else min_decisions,
                        reason=reason, evidence={}, changed_by=actor or service_actor(settings))
    log.info("%s: %s of challenger v%s against champion v%s started (share %.3f)", model_name, mode, challenger,
             champion, state.share)
    return state


def end(settings: Settings, model_name: str, event: str, reason: str,
        evidence: dict[str, Any] | None = None, canary_id: str | None = None,
        actor: str | None = None) -> CanaryState | None:
    """Append an ``off`` row ending the current canary (``stop`` or ``promoted``); ``None`` if none
    is running (or, with ``canary_id``, if that canary is no longer the current one). ``actor``: the
    principal who ends it (default: this process's service principal, :func:`service_actor`)."""
    actor = actor or service_actor(settings)
    with db.connect(settings) as conn:
        _lock(conn, model_name)
        cur = current(conn, model_name)
        if cur is None or not cur.active or (canary_id is not None and cur.canary_id != canary_id):
            return None
        state = _append(conn, cur, event=event, mode="off", share=0.0, reason=reason, evidence=evidence or {},
                        changed_by=actor)
    log.info("%s: canary %s ended (%s): %s", model_name, state.canary_id, event, reason)
    return state


# --- evidence from the decision log ---------------------------------------------------------------

_ARMS_CTE = """
with w as (
    select case when (model_alias = 'challenger' and model_version = %(challenger)s)
                  or shadow->>'alias' = 'challenger' then 'challenger' else 'champion' end as arm,
           case when serving_mode = 'shadow' then (shadow->>'score')::double precision else score end as s_chal,
           score, latency_ms, degraded, shadow->>'error' is not null as errored, serving_mode, decision, request
    from serving.decision_log
    where model_name = %(model)s and serving_mode = %(mode)s
      and decided_at >= %(start)s and decided_at < %(end)s
      and (model_version = %(champion)s or model_version = %(challenger)s)
)
"""


@dataclass(frozen=True)
class ArmStats:
    """One arm's figures over a window."""

    n: int = 0
    n_scored: int = 0
    n_errors: int = 0
    n_degraded: int = 0
    p99_ms: float | None = None
    p99_low_ms: float | None = None  # one-sided 95 % lower confidence bound of p99 (canary mode, challenger)
    n_adverse: int | None = None  # of the scored decisions, those against the customer (None: not its decisions)
    n_matured: int | None = None  # decisions whose outcome is known (None: not computed)
    n_positive: int | None = None  # ...and was positive (a fraud, a default)

    @property
    def bad_rate(self) -> float | None:
        return (self.n_errors + self.n_degraded) / self.n if self.n else None

    @property
    def adverse_rate(self) -> float | None:
        """Share of the arm's scored decisions against the customer (fraud review/deny, credit decline/refer)."""
        return self.n_adverse / self.n_scored if self.n_adverse is not None and self.n_scored else None

    @property
    def outcome_rate(self) -> float | None:
        """Share of the arm's decisions with a matured label that were positive (frauds, defaults)."""
        return self.n_positive / self.n_matured if self.n_positive is not None and self.n_matured else None


@dataclass(frozen=True)
class CanaryStats:
    """Both arms and the challenger's score PSI against the champion's, over [start, end)."""

    mode: str
    start: datetime
    end: datetime
    champion: ArmStats
    challenger: ArmStats
    psi: float | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        for arm in ("champion", "challenger"):
            a = getattr(self, arm)
            out[arm].update(bad_rate=a.bad_rate, adverse_rate=a.adverse_rate, outcome_rate=a.outcome_rate)
        return out


def psi(expected: list[int], actual: list[int], floor: float = 1e-4) -> float | None:
    """Population stability index of two binned counts (same bins); ``None`` if either is empty.

    Hand-written rather than Evidently's legacy ``psi`` stattest: that one bins on equal widths
    over the combined range (fraud scores sit near 0, so nearly everything falls in one bin) and
    its import costs seconds, which the once-a-second watchdog inside serving cannot pay."""
    te, ta = sum(expected), sum(actual)
    if not te or not ta:
        return None
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / te, floor), max(a / ta, floor)
        total += (pa - pe) * math.log(pa / pe)
    return total


def quantile_lower_rank(n: int, q: float = 0.99, confidence: float = 0.95) -> int | None:
    """The 1-based rank ``k`` of the order statistic ``x_(k)`` of ``n`` samples that is a lower
    confidence bound for their distribution's ``q``-quantile: the largest ``k`` with
    ``P(Binomial(n, q) >= k) >= confidence`` (exact, for any continuous distribution). ``None`` for
    no samples. E.g. n=50 → 48, n=184 → 180, n=1000 → 985 (q=0.99, 95 %)."""
    if n <= 0:
        return None
    target = math.log(confidence)
    log_q, log_1q = math.log(q), math.log1p(-q)
    log_pmf = n * log_q  # P(B = n), then down one rank at a time: the tail P(B >= k) grows
    log_tail, k = log_pmf, n
    while log_tail < target and k > 1:
        log_pmf += math.log(k) - math.log(n - k + 1) + log_1q - log_q  # P(B = k-1) from P(B = k)
        k -= 1
        hi, lo = max(log_tail, log_pmf), min(log_tail, log_pmf)
        log_tail = hi + math.log1p(math.exp(lo - hi))
    return k if log_tail >= target else None


def _with_p99_lower_bound(conn, p: dict[str, Any], challenger: ArmStats) -> ArmStats:
    """The challenger's arm with its p99's lower confidence bound (:func:`quantile_lower_rank`):
    one read of one latency. Only the challenger's is judged, so only it is computed (the
    champion's arm is the large one, and the watchdog asks every second)."""
    k = quantile_lower_rank(challenger.n)
    if k is None:
        return challenger
    row = conn.execute(_ARMS_CTE + """
        select latency_ms from w where arm = 'challenger' order by latency_ms offset %(k)s limit 1""",
                       {**p, "k": k - 1}).fetchone()
    return replace(challenger, p99_low_ms=None if row is None else row[0])


def stats(conn, state: CanaryState, bins: int, start: datetime | None = None,
          end: datetime | None = None, product: Product | None = None,
          outcomes_settings: Settings | None = None) -> CanaryStats:
    """The canary's figures from the decision log (aggregate queries and one latency; no row leaves it).

    Canary mode: the challenger arm is what was routed to the challenger (decided by it, or failed on
    it and decided by the champion: an error); PSI compares the two arms' scores. Shadow mode: every
    decision is the champion's, and the challenger's shadow score of the same request is compared (so
    only the champion's arm has an adverse-decision rate). ``product`` names the adverse decisions;
    with ``outcomes_settings`` each arm's matured outcomes are counted too (:func:`_outcomes`: a join with
    the marts, for the gate and ``status``, never the every-second watchdog)."""
    start = start or state.started_at
    end = end or conn.execute("select clock_timestamp()").fetchone()[0]
    if not state.active:
        raise ValueError("stats of a canary are computed from its start row (or a running state), not an 'off' row")
    mode = state.mode
    p = {"model": state.model_name, "mode": mode, "start": start, "end": end,
         "champion": state.champion_version, "challenger": state.challenger_version,
         "adverse": list(product.adverse) if product else []}
    arms: dict[str, ArmStats] = {}
    if mode == "shadow":  # one population: the champion decided, the challenger shadowed
        r = conn.execute(_ARMS_CTE + """
            select count(*), count(score) filter (where not degraded),
                   count(s_chal) filter (where not degraded and not errored),
                   count(*) filter (where errored), count(*) filter (where degraded),
                   percentile_cont(0.99) within group (order by latency_ms),
                   count(*) filter (where not degraded and score is not null and decision = any(%(adverse)s))
            from w""", p).fetchone()
        arms["champion"] = ArmStats(n=r[0], n_scored=r[1], n_degraded=r[4], p99_ms=r[5],
                                    n_adverse=r[6] if product else None)
        arms["challenger"] = ArmStats(n=r[0], n_scored=r[2], n_errors=r[3], n_degraded=r[4])
        champ_col, chal_col = "score", "s_chal"
        champ_filter, chal_filter = "true", "not errored and not degraded"
    else:
        for arm, n, n_scored, n_err, n_deg, p99, n_adv in conn.execute(_ARMS_CTE + """
                select arm, count(*), count(score) filter (where not degraded and not errored),
                       count(*) filter (where errored), count(*) filter (where degraded),
                       percentile_cont(0.99) within group (order by latency_ms),
                       count(*) filter (where not degraded and not errored and score is not null
                                          and decision = any(%(adverse)s))
                from w group by arm""", p).fetchall():
            arms[arm] = ArmStats(n=n, n_scored=n_scored, n_errors=n_err, n_degraded=n_deg, p99_ms=p99,
                                 n_adverse=n_adv if product else None)
        if "challenger" in arms:
            arms["challenger"] = _with_p99_lower_bound(conn, p, arms["challenger"])
        champ_col, chal_col = "score", "score"
        champ_filter, chal_filter = "arm = 'champion'", "arm = 'challenger' and not errored and not degraded"
    qs = [i / bins for i in range(1, bins)]
    edges = conn.execute(_ARMS_CTE + f"""
        select percentile_cont(%(qs)s::float8[]) within group (order by {champ_col})
        from w where {champ_filter} and not degraded and {champ_col} is not null""", {**p, "qs": qs}).fetchone()[0]
    value = None
    if edges:
        edges = sorted(set(edges))
        counts = conn.execute(_ARMS_CTE + f"""
            select width_bucket({champ_col}, %(edges)s::float8[]), 0 as side, count(*) from w
            where {champ_filter} and not degraded and {champ_col} is not null group by 1
            union all
            select width_bucket({chal_col}, %(edges)s::float8[]), 1, count(*) from w
            where {chal_filter} and {chal_col} is not null group by 1""", {**p, "edges": edges}).fetchall()
        expected, actual = [0] * (len(edges) + 1), [0] * (len(edges) + 1)
        for b, side, n in counts:
            (actual if side else expected)[b] += n
        value = psi(expected, actual)
    if product is not None and outcomes_settings is not None:
        for arm, (n_matured, n_positive) in _outcomes(conn, p, product, outcomes_settings).items():
            if arm in arms and not (mode == "shadow" and arm == "challenger"):  # shadow: the champion decided all
                arms[arm] = replace(arms[arm], n_matured=n_matured, n_positive=n_positive)
    return CanaryStats(mode=mode, start=start, end=end, champion=arms.get("champion", ArmStats()),
                       challenger=arms.get("challenger", ArmStats()), psi=value)


def _outcomes(conn, p: dict[str, Any], product: Product, settings: Settings) -> dict[str, tuple[int, int]]:
    """Per arm, (decisions whose label has matured, of which positive), from the product's outcome mart
    (empty when the mart is not there: a warehouse without dbt run, as in a test that writes no marts).
    A canary of minutes rarely sees a label mature: reported for the reviewer, not gated."""
    o = product.outcomes
    if conn.execute("select to_regclass(%s)", (o.table,)).fetchone()[0] is None:
        return {}
    rows = conn.execute(_ARMS_CTE + f"""
        select w.arm, count(o.{o.key}), count(o.{o.key}) filter (where o.{o.label}::int = 1)
        from w left join {o.table} o on o.{o.key} = w.request->>%(request_key)s and {o.matured}
        where not w.degraded and not w.errored and w.score is not null group by w.arm""",
                        {**p, "request_key": o.request_key, "label_delay_days": settings.label_delay_days}).fetchall()
    return {arm: (n, pos) for arm, n, pos in rows}


# --- the promotion gate -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CanaryVerdict:
    """The canary gate's answer for one challenger, with its evidence."""

    ok: bool
    verdict: str  # passed | failed | insufficient | rolled_back | missing | skipped
    reason: str
    canary_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bounds(settings: Settings) -> dict[str, float]:
    return {"max_p99_ratio": settings.canary_max_p99_ratio, "p99_slack_ms": settings.canary_p99_slack_ms,
            "max_error_rate": settings.canary_max_error_rate, "max_psi": settings.canary_max_psi,
            "max_adverse_rate_change": settings.canary_max_adverse_rate_change}


def judge(settings: Settings, st: CanaryStats) -> list[str]:
    """The gate's breached bounds (empty: within every bound)."""
    out = []
    ch, cc = st.champion, st.challenger
    if st.mode == "canary" and ch.p99_ms is not None and cc.p99_low_ms is not None:
        allowed = max(ch.p99_ms * settings.canary_max_p99_ratio, ch.p99_ms + settings.canary_p99_slack_ms)
        if cc.p99_low_ms > allowed:
            out.append(f"challenger p99 >= {cc.p99_low_ms:.2f} ms at 95 % confidence (estimate {cc.p99_ms:.2f} ms "
                       f"over {cc.n}) > {allowed:.2f} ms (champion {ch.p99_ms:.2f} ms x"
                       f"{settings.canary_max_p99_ratio:g} or +{settings.canary_p99_slack_ms:g} ms)")
    if cc.bad_rate is not None and ch.bad_rate is not None:
        if cc.bad_rate - ch.bad_rate > settings.canary_max_error_rate:
            out.append(f"challenger error+degraded rate {cc.bad_rate:.2%} vs champion {ch.bad_rate:.2%} "
                       f"(> +{settings.canary_max_error_rate:.2%})")
    if st.mode == "canary" and cc.adverse_rate is not None and ch.adverse_rate is not None and \
            abs(cc.adverse_rate - ch.adverse_rate) > settings.canary_max_adverse_rate_change:
        out.append(f"challenger's adverse decisions {cc.adverse_rate:.2%} vs champion {ch.adverse_rate:.2%} "
                   f"(a change of more than {settings.canary_max_adverse_rate_change:.2%})")
    if st.psi is None:
        out.append("score PSI undefined (an arm without scored decisions)")
    elif st.psi > settings.canary_max_psi:
        out.append(f"score PSI {st.psi:.3f} > {settings.canary_max_psi:g}")
    return out


def _canary_rows(conn, model_name: str, challenger: str) -> list[CanaryState]:
    """Every row of the latest canary of ``challenger`` (oldest first)."""
    rows = conn.execute(f"""select {', '.join(_COLS)} from {TABLE} where canary_id = (
            select canary_id from {TABLE} where model_name = %s and challenger_version = %s and event = 'start'
              and mode = 'canary' order by changed_at desc limit 1) order by changed_at""",
                        (model_name, challenger)).fetchall()
    return [_row(r) for r in rows]


def gate(settings: Settings, model_name: str, challenger: str, champion: str) -> CanaryVerdict:
    """Did ``challenger`` pass a canary against ``champion``? Judged on its latest canary-mode phase,
    over its whole window (start to stop, or to now while it runs): long enough, enough challenger
    decisions, never rolled back, and every bound held (:func:`judge`)."""
    if not settings.canary_required:
        return CanaryVerdict(True, "skipped", "canary not required (RISKLOOP_CANARY_REQUIRED=false)")
    with db.connect(settings) as conn:
        rows = _canary_rows(conn, model_name, challenger)
        if not rows:
            return CanaryVerdict(False, "missing", f"no canary phase for v{challenger}: run "
                                 f"`riskloop canary start --model {model_name}` and let it reach its minimums")
        first, last = rows[0], rows[-1]
        cid = first.canary_id
        if any(r.event == "rollback" for r in rows):
            rb = next(r for r in rows if r.event == "rollback")
            return CanaryVerdict(False, "rolled_back", f"canary {cid} of v{challenger} was rolled back at "
                                 f"{rb.changed_at.isoformat()}: {rb.reason}", cid, rb.evidence)
        if first.champion_version != champion:
            return CanaryVerdict(False, "missing", f"canary {cid} compared v{challenger} with champion "
                                 f"v{first.champion_version}, not the current v{champion}: run a new canary", cid)
        st = stats(conn, first, settings.canary_psi_bins, end=None if last.active else last.changed_at,
                   product=product_of(settings, model_name), outcomes_settings=settings)
    minutes = (st.end - st.start).total_seconds() / 60
    evidence = {"stats": st.to_dict(), "minutes": minutes, "min_minutes": first.min_minutes,
                "min_decisions": first.min_decisions, "share": first.share, "bounds": _bounds(settings)}
    short = []
    if minutes < first.min_minutes:
        short.append(f"ran {minutes:.1f} of {first.min_minutes:g} minutes")
    if st.challenger.n_scored < first.min_decisions:
        short.append(f"{st.challenger.n_scored} of {first.min_decisions} scored challenger decisions")
    if short:
        return CanaryVerdict(False, "insufficient", f"canary {cid} of v{challenger} not long enough yet: "
                             + ", ".join(short), cid, evidence)
    breaches = judge(settings, st)
    figures = (f"{st.challenger.n_scored} challenger / {st.champion.n_scored} champion decisions over "
               f"{minutes:.1f} min, PSI {st.psi:.3f}" if st.psi is not None else "PSI n/a")
    if breaches:
        return CanaryVerdict(False, "failed", f"canary {cid} of v{challenger} out of bounds: "
                             + "; ".join(breaches) + f" ({figures})", cid, evidence)
    return CanaryVerdict(True, "passed", f"canary {cid} of v{challenger} passed ({figures})", cid, evidence)


def tag_version(settings: Settings, model_name: str, version: str, verdict: CanaryVerdict) -> None:
    """``canary.*`` tags on the version (shown by ``riskloop review show`` and the review page)."""
    from riskloop.models.registry import mlflow_client

    ev = verdict.evidence
    st = ev.get("stats") or {}
    tags = {"canary.verdict": verdict.verdict, "canary.reason": verdict.reason[:5000],
            "canary.id": verdict.canary_id or ""}
    if st:
        tags.update({"canary.share": f"{ev.get('share', 0):g}", "canary.minutes": f"{ev.get('minutes', 0):.1f}",
                     "canary.psi": "" if st["psi"] is None else f"{st['psi']:.4f}"})
        for arm in ("champion", "challenger"):
            a = st[arm]
            tags[f"canary.{arm}.decisions"] = str(a["n_scored"])
            tags[f"canary.{arm}.p99_ms"] = "" if a["p99_ms"] is None else f"{a['p99_ms']:.2f}"
            for rate in ("bad_rate", "adverse_rate", "outcome_rate"):
                tags[f"canary.{arm}.{rate}"] = "" if a.get(rate) is None else f"{a[rate]:.4f}"
        low = st["challenger"].get("p99_low_ms")  # the bound the gate judged
        tags["canary.challenger.p99_low_ms"] = "" if low is None else f"{low:.2f}"
    client = mlflow_client(settings.tracking_uri)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, v)


# --- tripwires and rollback -------------------------------------------------------------------------

def tripwires(settings: Settings, st: CanaryStats) -> list[str]:
    """Hard bounds crossed (each a reason); judged only with enough decisions in both arms."""
    ch, cc = st.champion, st.challenger
    if min(ch.n, cc.n) < settings.canary_watch_min_decisions:
        return []
    out = []
    if cc.bad_rate is not None and ch.bad_rate is not None and \
            cc.bad_rate - ch.bad_rate > settings.canary_hard_max_error_rate:
        out.append(f"error+degraded rate {cc.bad_rate:.1%} vs champion {ch.bad_rate:.1%} "
                   f"(> +{settings.canary_hard_max_error_rate:.1%})")
    # Both conditions: a busy machine slows both arms alike, which is not the challenger's fault.
    # The p99's lower confidence bound, as in judge: 2 slow requests of 50 do not roll back.
    if cc.p99_low_ms is not None and cc.p99_low_ms > settings.canary_hard_p99_ms and \
            cc.p99_low_ms > settings.canary_hard_p99_ratio * (ch.p99_ms or 0.0):
        out.append(f"p99 latency >= {cc.p99_low_ms:.1f} ms at 95 % confidence > {settings.canary_hard_p99_ms:g} ms "
                   f"and > {settings.canary_hard_p99_ratio:g} x the champion's {ch.p99_ms or 0.0:.1f} ms")
    if st.psi is not None and min(ch.n_scored, cc.n_scored) >= settings.canary_watch_min_decisions \
            and st.psi > settings.canary_hard_max_psi:
        out.append(f"score PSI {st.psi:.3f} > {settings.canary_hard_max_psi:g}")
    return out


def rollback(settings: Settings, state: CanaryState, reason: str, evidence: dict[str, Any],
             actor: str | None = None) -> CanaryState | None:
    """Share to 0 and ``@challenger`` back to the champion's version, recorded and alerted.

    Conditional: only if ``state``'s canary is still the current, active one (another watcher may
    have rolled it back a moment ago: then nothing is done and ``None`` returned). ``actor``: the
    principal the watcher acts as (default: this process's service principal, :func:`service_actor`)."""
    from riskloop.core.alerts import notify
    from riskloop.models.registry import mlflow_client

    with db.connect(settings) as conn:
        _lock(conn, state.model_name)
        cur = current(conn, state.model_name)
        if cur is None or not cur.active or cur.canary_id != state.canary_id:
            return None
        new = _append(conn, cur, event="rollback", mode="off", share=0.0, reason=reason,
                      evidence={**evidence, "mode": cur.mode}, changed_by=actor or service_actor(settings))
        conn.commit()  # share 0 first: serving stops routing at its next poll whatever the registry does
        client = mlflow_client(settings.tracking_uri)
        moved = None
        try:
            now = str(client.get_model_version_by_alias(state.model_name, CHALLENGER).version)
            if now == state.challenger_version and state.champion_version:
                client.set_registered_model_alias(state.model_name, CHALLENGER, state.champion_version)
                moved = state.champion_version
            client.set_model_version_tag(state.model_name, state.challenger_version, "canary.verdict", "rolled_back")
            client.set_model_version_tag(state.model_name, state.challenger_version, "canary.reason", reason[:5000])
        except Exception:  # noqa: BLE001 - the state row (share 0) is what stops the traffic; say so loudly
            log.exception("%s: canary %s rolled back (share 0) but the registry update failed", state.model_name,
                          state.canary_id)
    summary = (f"{state.model_name}: canary of v{state.challenger_version} ROLLED BACK (share 0"
               + (f", @challenger back to v{moved}" if moved else "") + f"): {reason}")
    log.error(summary)
    notify(settings, "canary_rollback", state.model_name, summary,
           details={"canary_id": state.canary_id, "challenger_version": state.challenger_version,
                    "champion_version": state.champion_version, "state_id": new.state_id,
                    "challenger_alias_now": moved or state.challenger_version, **evidence})
    return new


def watch_once(settings: Settings, model_name: str, state: CanaryState | None = None,
               actor: str | None = None) -> CanaryState | None:
    """One watchdog check of the model's running canary: the rollback row if a tripwire fired
    (recorded as done by ``actor``, default this process's service principal)."""
    with db.connect(settings) as conn:
        state = state or current(conn, model_name)
        if state is None or state.mode != "canary":
            return None
        since = conn.execute("select clock_timestamp()").fetchone()[0] - timedelta(
            seconds=settings.canary_watch_window_s)
        st = stats(conn, state, settings.canary_psi_bins, start=max(state.started_at, since),
                   product=product_of(settings, model_name))
    tripped = tripwires(settings, st)
    if not tripped:
        return None
    return rollback(settings, state, "tripwire: " + "; ".join(tripped), {"stats": st.to_dict()}, actor=actor)


def watch(settings: Settings, model_name: str, interval_s: float | None = None,
          max_iterations: int | None = None, actor: str | None = None) -> None:
    """``riskloop canary watch``: :func:`watch_once` every ``interval_s`` until interrupted, acting as
    ``actor`` (the CLI's principal; default this process's service principal)."""
    actor = actor or service_actor(settings)
    interval = interval_s or settings.canary_watch_interval_s
    i = 0
    while max_iterations is None or i < max_iterations:
        i += 1
        try:
            rolled = watch_once(settings, model_name, actor=actor)
            if rolled is not None:
                log.warning("%s: rolled back canary %s", model_name, rolled.canary_id)
        except Exception:  # noqa: BLE001 - a watchdog keeps watching through a database blip
            log.exception("canary watch of %s failed; retrying in %.1fs", model_name, interval)
        time.sleep(interval)


def status(settings: Settings, model_name: str) -> dict[str, Any]:
    """``riskloop canary status``: the current state and, if a canary ran, its figures and gate verdict."""
    state = current_state(settings, model_name)
    out: dict[str, Any] = {"model_name": model_name, "state": state.to_dict() if state else None}
    if state is not None and state.challenger_version and state.champion_version:
        with db.connect(settings) as conn:
            rows = [r for r in conn.execute(f"select {', '.join(_COLS)} from {TABLE} where canary_id = %s "
                                            "order by changed_at", (state.canary_id,)).fetchall()]
            first = _row(rows[0])
            out["stats"] = stats(conn, first, settings.canary_psi_bins, end=None if state.active else state.changed_at,
                                 product=product_of(settings, model_name), outcomes_settings=settings).to_dict()
        if first.mode == "canary":
            out["gate"] = gate(settings, model_name, state.challenger_version, state.champion_version).to_dict()
    return out
