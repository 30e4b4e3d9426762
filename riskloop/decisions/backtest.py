"""What a candidate policy would have decided on a period of the decision log, before anyone approves it.

The log keeps everything a decision depended on (the request, the features, the stateful
``signals``, the feature views' event times and the model's score), so a policy can be replayed on
history without a network call and without re-scoring: the logged score is the model's answer, the
candidate only changes thresholds and rules. "Before" is what was logged; "after" is what the
candidate decides on the same inputs.

Speed: one query per period streams exactly the columns the candidate's rules read (the JSON
columns are unpacked by ``jsonb_to_record`` in Postgres, once per row) as Arrow record batches
over ADBC (COPY underneath), and each rule is evaluated as a column expression over a batch
(:func:`evaluate`), the vector twin of :meth:`Policy.decide` — a test holds the two equal row by row.

Labels: a decision's payment is looked up in ``marts.fct_transactions``
(``payment_id`` = ``request->>'transaction_id'``). It is *matured* when the payment is at least
``label_delay_days`` older than the as-of time (default: the newest payment in the warehouse, never
the wall clock, as realised performance in :mod:`riskloop.monitoring.drift`), and then counts as
fraud if ``is_fraud`` and the fraud was known by the as-of time (``fraud_known_at`` ≤ as-of), as
good otherwise: the figures are what was known then, so a rerun with the same as-of gives the
same answer. Decisions without a fact row (a payment never authorised) or not matured are
unlabelled. Each logged decision counts once (a retried request is two decisions).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.core.subject_keys import ENVELOPE, PERSONAL_FIELDS, reveal
from riskloop.decisions import log as decision_log
from riskloop.decisions.policy import Policy, Rule, realtime_view

log = logging.getLogger(__name__)

APPROVING = ("allow", "approve")
REVIEWING = ("review", "refer")
DENYING = ("deny", "decline")
FACT_TABLE = "marts.fct_transactions"

# Request fields every backtest reads (money, the queue's day comes from decided_at).
_BASE_REQUEST = {"amount_minor": "num", "currency": "str"}


class BacktestError(ValueError):
    """The backtest cannot run (bad period, a rule with no column form)."""


# --- the candidate's inputs as columns -------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """The columns a policy's evaluation reads: request fields, features, signals and the event
    times of real-time views, each with its type (num | str | present | ts | false)."""

    request: dict[str, str]
    features: tuple[str, ...]
    signals: dict[str, str]
    stamps: tuple[str, ...]
    documents: bool = False  # the whole JSON columns too, for the row-by-row evaluation


# The rule kinds :func:`rule_mask` evaluates as columns. A policy with any other rule (or a rule that
# does not simply decide, such as one in shadow) is evaluated row by row with Policy.decide itself:
# slower, never wrong.
COLUMN_KINDS = frozenset({"amount_above", "country_in", "card_in", "terminal_in", "feature_above", "feature_equals",
                          "new_device_amount_above", "impossible_travel"})


def vectorisable(policy: Policy) -> bool:
    return all(r.kind in COLUMN_KINDS and getattr(r, "mode", "live") == "live" for r in policy.rules)


def inputs_of(policy: Policy) -> Inputs:
    if not vectorisable(policy):
        return Inputs(dict(_BASE_REQUEST), (), {}, (), documents=True)
    request = dict(_BASE_REQUEST)
    features: dict[str, None] = {}
    signals: dict[str, str] = {}
    stamps: dict[str, None] = {}
    for rule in policy.rules:
        match rule.kind:
            case "country_in":
                request["country"] = "str"
            case "card_in":
                request["card_token"] = "str"
            case "terminal_in":
                request["terminal_id"] = "str"
            case "feature_above" | "feature_equals":
                features[rule.feature or ""] = None
            case "new_device_amount_above":
                request["device_id"] = "present"
                signals["device_known"] = "false"
            case "impossible_travel":
                signals["distance_km"] = "num"
                signals["elapsed_h"] = "num"
            case "amount_above":
                pass
        if rule.max_age_s is not None:
            request["timestamp"] = "ts"
            stamps[realtime_view(rule.feature or "") or ""] = None
    return Inputs(request, tuple(features), signals, tuple(stamps))


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _cast(expr: str, kind: str) -> str:
    """A value unpacked as text by jsonb_to_record → the type the rule compares, null when it is
    not one (a malformed value in one row reads as absent, it never fails the query)."""
    return {
        "num": f"case when pg_input_is_valid({expr}, 'float8') then {expr}::float8 end",
        "str": expr,
        "present": f"({expr} is not null)",
        "false": f"coalesce({expr} = 'false', false)",
        "ts": f"case when pg_input_is_valid({expr}, 'timestamptz') then {expr}::timestamptz end",
    }[kind]


def _record(alias: str, column: str, fields: dict[str, str]) -> tuple[list[str], str]:
    """Select expressions (named ``<alias>.<field>``) and the lateral jsonb_to_record join of one JSON column."""
    if not fields:
        return [], ""
    names = list(fields)
    cols = ", ".join(f"{_ident(n)} text" for n in names)
    join = f"cross join lateral jsonb_to_record(d.{column}) as {alias}({cols})"

    def expr(n: str, kind: str) -> str:
        if column == "request" and kind == "present" and n in PERSONAL_FIELDS:
            # sealed (riskloop.core.subject_keys): the envelope lists which personal fields the request had
            return f"({alias}.{_ident(n)} is not null or coalesce(d.request->{_lit(ENVELOPE)}->'fields' ? {_lit(n)}, false))"
        return _cast(f"{alias}.{_ident(n)}", kind)

    return [f"{expr(n, k)} as {_ident(f'{alias}.{n}')}" for n, k in fields.items()], join


def _query(policy: Policy, inputs: Inputs, start: datetime, end: datetime, as_of: datetime | None,
           labelled: bool, delay_days: int) -> str:
    selects = ["d.decision_id::text as decision_id", "d.decided_at", "d.decision", "d.score"]
    joins = []
    for alias, column, fields in (("r", "request", inputs.request),
                                  ("f", "features", dict.fromkeys(inputs.features, "num")),
                                  ("s", "signals", inputs.signals),
                                  ("t", "feature_timestamps", dict.fromkeys(inputs.stamps, "ts"))):
        cols, join = _record(alias, column, fields)
        selects += cols
        if join:
            joins.append(join)
    if inputs.documents:
        selects += [f"d.{c}::text as {_ident('json.' + c)}" for c in ("request", "features", "signals",
                                                                      "feature_timestamps")]
    if labelled:
        assert as_of is not None
        asof = f"{_lit(as_of.isoformat())}::timestamptz"
        selects.append(f"case when x.tx_at is null then null when x.tx_at > {asof} - make_interval(days => {delay_days}) "
                       f"then null else (x.is_fraud = 1 and coalesce(x.fraud_known_at, x.tx_at) <= {asof}) end "
                       "as label_fraud")
        joins.append(f"left join {FACT_TABLE} x on x.payment_id = d.request->>'transaction_id'")
    else:
        selects.append("null::boolean as label_fraud")
    return (f"select {', '.join(selects)} from {decision_log.TABLE} d {' '.join(joins)} "
            f"where d.product = {_lit(policy.policy)} and d.decided_at >= {_lit(start.isoformat())}::timestamptz "
            f"and d.decided_at < {_lit(end.isoformat())}::timestamptz")


# --- the policy as column expressions --------------------------------------------------------

def _col(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy() if name in frame.columns else np.full(len(frame), None, dtype=object)


def _num(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for absent (every comparison with NaN is False: absent
    proves no breach, as in :meth:`Rule.fires`)."""
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _in(frame: pd.DataFrame, name: str, values: frozenset[str]) -> np.ndarray:
    if name not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame[name].isin(values).to_numpy(dtype=bool)


def _bool(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame[name].fillna(False).to_numpy(dtype=bool)


def _age_s(frame: pd.DataFrame, rule: Rule) -> np.ndarray:
    """Seconds from the rule's real-time view's event time to the payment; NaN when either is absent."""
    view = realtime_view(rule.feature or "") or ""
    ts, stamp = f"r.{'timestamp'}", f"t.{view}"
    if ts not in frame.columns or stamp not in frame.columns:
        return np.full(len(frame), np.nan)
    delta = pd.to_datetime(frame[ts], utc=True) - pd.to_datetime(frame[stamp], utc=True)
    return delta.dt.total_seconds().to_numpy(dtype=np.float64, na_value=np.nan)


def rule_mask(rule: Rule, frame: pd.DataFrame, degraded: np.ndarray) -> np.ndarray:
    """Where ``rule`` fires, as :meth:`Rule.fires` decides it for each row, over the whole frame."""
    n = len(frame)
    if rule.when == "degraded":
        mask = degraded.copy()
    elif rule.when == "scored":
        mask = ~degraded
    else:
        mask = np.ones(n, dtype=bool)
    if rule.max_age_s is not None:
        age = _age_s(frame, rule)
        mask &= ~np.isnan(age) & (age <= rule.max_age_s)
    amount = _num(frame, "r.amount_minor")
    with np.errstate(invalid="ignore"):
        match rule.kind:
            case "amount_above":
                mask &= amount > rule.amount_minor
            case "country_in":
                mask &= _in(frame, "r.country", rule.countries)
            case "card_in":
                mask &= _in(frame, "r.card_token", rule.card_tokens)
            case "terminal_in":
                mask &= _in(frame, "r.terminal_id", rule.terminal_ids)
            case "feature_above":
                mask &= _num(frame, f"f.{rule.feature}") > rule.max
            case "feature_equals":
                mask &= _num(frame, f"f.{rule.feature}") == rule.value
            case "new_device_amount_above":
                mask &= _bool(frame, "r.device_id") & _bool(frame, "s.device_known") & (amount > rule.amount_minor)
            case "impossible_travel":
                distance, hours = _num(frame, "s.distance_km"), _num(frame, "s.elapsed_h")
                mask &= (distance >= rule.min_distance_km) & (distance > rule.max_speed_kmh * hours)
            case _:
                raise BacktestError(f"rule {rule.id}: kind {rule.kind} has no column form (see vectorisable)")
    return mask


@dataclass
class Evaluation:
    """A policy's decisions over a frame: outcome index per row (into ``policy.outcomes``) and,
    per rule id, where it fired."""

    decision: np.ndarray
    fired: dict[str, np.ndarray]

    def rules_at(self, i: int) -> list[str]:
        return [rid for rid, m in self.fired.items() if m[i]]


def evaluate(policy: Policy, frame: pd.DataFrame) -> Evaluation:
    """:meth:`Policy.decide` over every row of ``frame`` at once (columns as :func:`read_chunks`
    yields them): thresholds on the score (null = degraded), every rule as a mask, the most severe
    wins. A policy that is not :func:`vectorisable` goes row by row (:func:`evaluate_rows`)."""
    if not vectorisable(policy):
        return evaluate_rows(policy, frame)
    outcomes = policy.outcomes
    rank = {d: i for i, d in enumerate(outcomes)}
    score = _num(frame, "score")
    degraded = np.isnan(score)
    decision = np.zeros(len(frame), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        for d, t in policy.thresholds.items():
            decision = np.where(~degraded & (score >= t), np.maximum(decision, rank[d]), decision)
    if policy.degraded_decision is not None:
        decision = np.where(degraded, np.int8(rank[policy.degraded_decision]), decision)
    fired = {}
    for rule in policy.rules:
        mask = rule_mask(rule, frame, degraded)
        fired[rule.id] = mask
        decision = np.where(mask, np.maximum(decision, rank[rule.action]), decision).astype(np.int8)
    return Evaluation(decision.astype(np.int8), fired)


def evaluate_rows(policy: Policy, frame: pd.DataFrame) -> Evaluation:
    """:meth:`Policy.decide` on each row's logged JSON (``read_chunks(..., documents=True)``)."""
    import orjson

    missing = [c for c in ("json.request", "json.features", "json.signals", "json.feature_timestamps")
               if c not in frame.columns]
    if missing:
        raise BacktestError(f"row-by-row evaluation needs the logged JSON columns; the frame lacks {missing}")
    rank = {d: i for i, d in enumerate(policy.outcomes)}
    score = _num(frame, "score")
    decision = np.zeros(len(frame), dtype=np.int8)
    fired = {r.id: np.zeros(len(frame), dtype=bool) for r in policy.rules}

    def doc(text: str | None) -> dict[str, Any]:
        return orjson.loads(text) if text else {}

    columns = zip(frame["json.request"], frame["json.features"], frame["json.signals"],
                  frame["json.feature_timestamps"], strict=True)
    for i, (req, feats, sigs, stamps) in enumerate(columns):
        d, rules = policy.decide(None if np.isnan(score[i]) else float(score[i]), doc(req), doc(feats), doc(sigs),
                                 doc(stamps))
        decision[i] = rank[d]
        for rid in rules:
            fired[rid][i] = True
    return Evaluation(decision, fired)


# --- reading the log ---------------------------------------------------------------------------

def _adbc(settings: Settings) -> Any:
    import adbc_driver_postgresql.dbapi as adbc

    return adbc.connect(db.dsn(settings), autocommit=True)


def _facts(settings: Settings) -> tuple[bool, datetime | None]:
    with db.connect(settings) as conn:
        present, have_fact = conn.execute("select to_regclass(%s) is not null, to_regclass(%s) is not null",
                                          (decision_log.TABLE, FACT_TABLE)).fetchone()
        if not present:
            raise BacktestError(f"{decision_log.TABLE} does not exist: nothing has been decided yet")
        newest = conn.execute(f"select max(tx_at) from {FACT_TABLE}").fetchone()[0] if have_fact else None
    return have_fact, newest


def read_chunks(settings: Settings, policy: Policy, start: datetime, end: datetime, *,
                as_of: datetime | None = None, labelled: bool = True,
                documents: bool = False) -> Iterator[pd.DataFrame]:
    """The period's decisions of the policy's product, as frames of the columns the policy reads
    (with ``documents``, or for a policy evaluated row by row, the logged JSON columns too),
    streamed in record batches. ``label_fraud``: True fraud, False good, None unlabelled (see the
    module's docstring)."""
    ins = inputs_of(policy)
    if documents:
        ins = replace(ins, documents=True)
    sql = _query(policy, ins, start, end, as_of, labelled and as_of is not None, settings.label_delay_days)
    with _adbc(settings) as conn, conn.cursor() as cur:
        cur.execute("set timezone = 'UTC'")
        cur.execute(sql)
        for batch in cur.fetch_record_batch():
            if batch.num_rows:
                frame = batch.to_pandas()
                if ins.documents:
                    _reveal_requests(settings, frame)
                yield frame


def _reveal_requests(settings: Settings, frame: pd.DataFrame) -> None:
    """The logged requests of a row-by-row evaluation with their personal fields in clear (a list
    rule on a customer, device or ip reads them), or marked erased (riskloop.core.subject_keys)."""
    import orjson

    texts = frame["json.request"]
    sealed = [i for i, t in enumerate(texts) if t and f'"{ENVELOPE}"' in t]
    if not sealed:
        return
    with db.connect(settings) as conn:
        clear = reveal(conn, [orjson.loads(texts.iat[i]) for i in sealed], settings)
    column = texts.to_numpy(dtype=object, copy=True)
    for i, request in zip(sealed, clear, strict=True):
        column[i] = orjson.dumps(request).decode()
    frame["json.request"] = column


def read_parallel(settings: Settings, policy: Policy, start: datetime, end: datetime, workers: int,
                  **kwargs: Any) -> Iterator[tuple[int, pd.DataFrame]]:
    """:func:`read_chunks` of ``workers`` equal consecutive parts of ``[start, end)`` at once, each
    in its own thread and connection (Postgres unpacks the JSON in one backend per part; the
    driver reads and converts without the GIL), as ``(part, frame)`` in arrival order."""
    if workers <= 1:
        for frame in read_chunks(settings, policy, start, end, **kwargs):
            yield 0, frame
        return
    step = (end - start) / workers
    bounds = [(start + i * step, end if i == workers - 1 else start + (i + 1) * step) for i in range(workers)]
    frames: queue.Queue[tuple[int, pd.DataFrame | BaseException | None]] = queue.Queue(maxsize=2 * workers)
    stop = threading.Event()

    def read(part: int, a: datetime, b: datetime) -> None:
        try:
            for frame in read_chunks(settings, policy, a, b, **kwargs):
                if stop.is_set():
                    return
                frames.put((part, frame))
            frames.put((part, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            frames.put((part, exc))

    threads = [threading.Thread(target=read, args=(i, a, b), daemon=True, name=f"backtest-read-{i}")
               for i, (a, b) in enumerate(bounds)]
    for t in threads:
        t.start()
    try:
        running = workers
        while running:
            part, item = frames.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield part, item
    finally:
        stop.set()
        while any(t.is_alive() for t in threads):  # let a blocked producer finish its put
            try:
                frames.get(timeout=0.1)
            except queue.Empty:
                pass
        for t in threads:
            t.join()


# --- the report --------------------------------------------------------------------------------

class Money(BaseModel):
    """A count of decisions and their amounts, per currency in minor units (currencies never add up)."""

    n: int = 0
    amount_minor: dict[str, int] = Field(default_factory=dict)

    def add(self, n: int, by_currency: dict[str, int]) -> None:
        self.n += n
        for cur, v in by_currency.items():
            self.amount_minor[cur] = self.amount_minor.get(cur, 0) + int(v)


class LabelImpact(BaseModel):
    """On matured labels: fraud caught (not approved automatically) and good payments impacted."""

    as_of: datetime | None = Field(description="Labels as known at this time (default: the newest payment).")
    label_delay_days: int
    matured: int = 0
    unlabelled: int = 0
    fraud: Money = Field(default_factory=Money, description="Matured fraud in the period.")
    good: Money = Field(default_factory=Money, description="Matured good payments in the period.")
    fraud_caught_before: Money = Field(default_factory=Money, description="Fraud the logged decisions did not approve.")
    fraud_caught_after: Money = Field(default_factory=Money, description="Fraud the candidate would not approve.")
    fraud_newly_caught: Money = Field(default_factory=Money, description="Approved, now not approved.")
    fraud_newly_missed: Money = Field(default_factory=Money, description="Not approved, now approved.")
    good_impacted_before: Money = Field(default_factory=Money, description="Good payments not approved as logged.")
    good_impacted_after: Money = Field(default_factory=Money, description="Good payments the candidate would not approve.")
    good_newly_impacted: Money = Field(default_factory=Money,
                                       description="Good payments the candidate decides more severely.")
    good_released: Money = Field(default_factory=Money, description="Good payments the candidate decides less severely.")


class QueueDay(BaseModel):
    day: date
    before: int
    after: int

    @property
    def added(self) -> int:
        return self.after - self.before


class Example(BaseModel):
    decision_id: str
    decided_at: datetime
    score: float | None
    amount_minor: int | None
    currency: str | None
    before: str
    after: str
    rules_before: list[str]
    rules_after: list[str]
    label: str = Field(description="fraud | good | unlabelled")


class RuleHits(BaseModel):
    id: str
    action: str
    fired: int


class BacktestReport(BaseModel):
    """What the candidate would have decided on the period, next to what was logged."""

    policy_id: str
    policy_digest: str
    product: str
    period_from: datetime
    period_to: datetime
    outcomes: list[str]
    n_decisions: int = 0
    n_changed: int = 0
    n_unknown_logged: int = Field(0, description="Logged decisions that are no outcome of the product (skipped).")
    matrix: dict[str, dict[str, int]] = Field(description="Logged outcome → candidate outcome → decisions.")
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    labels: LabelImpact
    review_queue: list[QueueDay] = Field(default_factory=list, description="Review decisions per day (UTC).")
    rules: list[RuleHits] = Field(default_factory=list, description="How often each candidate rule fires.")
    inputs_missing: dict[str, int] = Field(
        default_factory=dict, description="Features the candidate reads, and the decisions that lack them "
        "(the log keeps only what the deciding policy and model read: there such a rule cannot fire).")
    examples: list[Example] = Field(default_factory=list)
    list_changes: list[int] = Field(default_factory=list, description="Drafted list changes applied to the "
                                    "candidate's lists for this run (`--list-change`).")
    seconds: float = 0.0

    def _rate(self, counts: dict[str, int], names: tuple[str, ...]) -> float | None:
        n = sum(counts.values())
        return sum(counts.get(d, 0) for d in names) / n if n else None

    @property
    def rates(self) -> dict[str, dict[str, float | None]]:
        """Approval, review and deny rates before and after."""
        return {when: {"approval": self._rate(c, APPROVING), "review": self._rate(c, REVIEWING),
                       "deny": self._rate(c, DENYING)}
                for when, c in (("before", self.counts_before), ("after", self.counts_after))}

    @property
    def review_added_per_day(self) -> dict[str, float]:
        added = [d.added for d in self.review_queue]
        return {"mean": float(np.mean(added)) if added else 0.0, "max": float(max(added)) if added else 0.0,
                "days": len(added)}

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        out["rates"] = self.rates
        out["review_added_per_day"] = self.review_added_per_day
        for d, day in zip(out["review_queue"], self.review_queue, strict=True):
            d["added"] = day.added
        return out


def _money(mask: np.ndarray, amount: np.ndarray, currency: np.ndarray) -> tuple[int, dict[str, int]]:
    n = int(mask.sum())
    if not n:
        return 0, {}
    sums = pd.Series(amount[mask]).groupby(pd.Series(currency[mask]).fillna("?")).sum()
    return n, {str(k): int(v) for k, v in sums.items()}


def backtest(settings: Settings, policy: Policy, start: datetime, end: datetime, *,
             as_of: datetime | None = None, examples: int = 20, workers: int = 2) -> BacktestReport:
    """Replay ``[start, end)`` of the decision log under ``policy`` (see the module's docstring),
    read by ``workers`` queries over consecutive parts of the period at once (:func:`read_parallel`)."""
    t0 = time.perf_counter()
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
    if end <= start:
        raise BacktestError(f"empty period: {start.isoformat()} to {end.isoformat()}")
    have_fact, newest = _facts(settings)
    as_of = as_of or newest
    outcomes = list(policy.outcomes)
    k = len(outcomes)
    rank = {d: i for i, d in enumerate(outcomes)}
    approving = np.array([d in APPROVING for d in outcomes])
    reviewing = np.array([d in REVIEWING for d in outcomes])
    matrix = np.zeros((k, k), dtype=np.int64)
    labels = LabelImpact(as_of=as_of, label_delay_days=settings.label_delay_days)
    queue: dict[date, np.ndarray] = {}
    hits = {r.id: 0 for r in policy.rules}
    missing = dict.fromkeys(inputs_of(policy).features, 0)
    picked: list[dict[tuple[int, int], list[Example]]] = [{} for _ in range(max(1, workers))]
    n_unknown = 0
    for part, frame in read_parallel(settings, policy, start, end, workers, as_of=as_of, labelled=have_fact):
        before = frame["decision"].map(rank).to_numpy(dtype=np.float64, na_value=np.nan)
        known = ~np.isnan(before)
        n_unknown += int((~known).sum())
        if not known.all():
            frame, before = frame[known].reset_index(drop=True), before[known]
        before = before.astype(np.int8)
        ev = evaluate(policy, frame)
        after = ev.decision
        matrix += np.bincount(before.astype(np.int64) * k + after, minlength=k * k).reshape(k, k)
        for rid, m in ev.fired.items():
            hits[rid] += int(m.sum())
        for feat in missing:
            missing[feat] += int(np.isnan(_num(frame, f"f.{feat}")).sum())
        days = pd.to_datetime(frame["decided_at"], utc=True).dt.date.to_numpy()
        per_day = pd.DataFrame({"day": days, "b": reviewing[before], "a": reviewing[after]}).groupby("day").sum()
        for day, (b, a) in zip(per_day.index, per_day.to_numpy(), strict=True):
            queue[day] = queue.get(day, np.zeros(2, dtype=np.int64)) + (b, a)
        _labels(labels, frame, before, after, approving)
        _examples(picked[part], frame, before, after, ev, outcomes, examples)
    # per kind of change, the first examples of the earliest part: the same ones however the parts interleave
    merged: dict[tuple[int, int], list[Example]] = {}
    for part_picked in picked:
        for cell, found in part_picked.items():
            merged.setdefault(cell, []).extend(found)
    chosen = _round_robin({cell: found[:examples] for cell, found in merged.items()}, examples)
    if chosen:
        with db.connect(settings) as conn:
            logged = dict(conn.execute(f"select decision_id::text, rules from {decision_log.TABLE} "
                                       "where decision_id = any(%s::uuid[])", ([e.decision_id for e in chosen],)))
        for e in chosen:
            e.rules_before = list(logged.get(e.decision_id) or [])
    report = BacktestReport(
        policy_id=policy.id, policy_digest=policy.digest, product=policy.policy, period_from=start, period_to=end,
        outcomes=outcomes, n_decisions=int(matrix.sum()), n_changed=int(matrix.sum() - np.trace(matrix)),
        n_unknown_logged=n_unknown,
        matrix={a: {b: int(matrix[i, j]) for j, b in enumerate(outcomes)} for i, a in enumerate(outcomes)},
        counts_before={d: int(matrix[i, :].sum()) for i, d in enumerate(outcomes)},
        counts_after={d: int(matrix[:, j].sum()) for j, d in enumerate(outcomes)},
        labels=labels, review_queue=[QueueDay(day=d, before=int(v[0]), after=int(v[1])) for d, v in sorted(queue.items())],
        rules=[RuleHits(id=r.id, action=r.action, fired=hits[r.id]) for r in policy.rules],
        inputs_missing=missing, examples=chosen)
    report.seconds = round(time.perf_counter() - t0, 3)
    log.info("backtest of %s on %s to %s: %d decisions, %d change (%.1fs)", policy.id, start.isoformat(),
             end.isoformat(), report.n_decisions, report.n_changed, report.seconds)
    return report


def _labels(labels: LabelImpact, frame: pd.DataFrame, before: np.ndarray, after: np.ndarray,
            approving: np.ndarray) -> None:
    lab = frame["label_fraud"].to_numpy(dtype=object)
    labelled = pd.notna(lab)
    fraud = labelled & (lab == True)  # noqa: E712 - elementwise over an object column of True/False/None
    good = labelled & ~fraud
    amount = np.nan_to_num(_num(frame, "r.amount_minor")).astype(np.int64)
    currency = _col(frame, "r.currency")
    stopped_b, stopped_a = ~approving[before], ~approving[after]
    labels.matured += int(labelled.sum())
    labels.unlabelled += int((~labelled).sum())
    for target, mask in ((labels.fraud, fraud), (labels.good, good),
                         (labels.fraud_caught_before, fraud & stopped_b), (labels.fraud_caught_after, fraud & stopped_a),
                         (labels.fraud_newly_caught, fraud & ~stopped_b & stopped_a),
                         (labels.fraud_newly_missed, fraud & stopped_b & ~stopped_a),
                         (labels.good_impacted_before, good & stopped_b), (labels.good_impacted_after, good & stopped_a),
                         (labels.good_newly_impacted, good & (after > before)),
                         (labels.good_released, good & (after < before))):
        target.add(*_money(mask, amount, currency))


def _examples(picked: dict[tuple[int, int], list[Example]], frame: pd.DataFrame, before: np.ndarray,
              after: np.ndarray, ev: Evaluation, outcomes: list[str], limit: int) -> None:
    """Up to ``limit`` changed decisions per (before, after) cell, the earliest rows of each batch."""
    k = len(outcomes)
    changed = np.flatnonzero(before != after)
    if not limit or not len(changed):
        return
    cells = before[changed].astype(np.int64) * k + after[changed]
    rows: list[int] = []
    for code in np.unique(cells):
        need = limit - len(picked.get((int(code) // k, int(code) % k), []))
        if need > 0:
            rows.extend(changed[cells == code][:need].tolist())
    lab = frame["label_fraud"]
    amount, score, currency = _num(frame, "r.amount_minor"), _num(frame, "score"), _col(frame, "r.currency")
    for i in rows:
        cell = (int(before[i]), int(after[i]))
        label = lab.iloc[i]
        picked.setdefault(cell, []).append(Example(
            decision_id=str(frame["decision_id"].iloc[i]), decided_at=frame["decided_at"].iloc[i].to_pydatetime(),
            score=None if np.isnan(score[i]) else float(score[i]),
            amount_minor=None if np.isnan(amount[i]) else int(amount[i]), currency=currency[i],
            before=outcomes[cell[0]], after=outcomes[cell[1]], rules_before=[], rules_after=ev.rules_at(i),
            label="unlabelled" if label is None or pd.isna(label) else "fraud" if label else "good"))


def _round_robin(picked: dict[tuple[int, int], list[Example]], limit: int) -> list[Example]:
    """``limit`` examples taken in turn from every kind of change, so a rare change is shown too."""
    out: list[Example] = []
    cells = [picked[c] for c in sorted(picked)]
    depth = 0
    while len(out) < limit and any(depth < len(c) for c in cells):
        out.extend(c[depth] for c in cells if depth < len(c))
        depth += 1
    return sorted(out[:limit], key=lambda e: e.decided_at)


def parse_time(value: str) -> datetime:
    """A CLI time (``2026-11-01`` or an ISO timestamp), UTC when it has no zone."""
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def default_period(days: int = 30, now: datetime | None = None) -> tuple[datetime, datetime]:
    end = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return end - timedelta(days=days), end
