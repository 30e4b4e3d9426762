"""Cases: the analysts' queue of flagged decisions, as append-only events.

``cases.case_events`` is the record (who, when, what; the database refuses UPDATE, DELETE and
TRUNCATE). The case row (``cases.cases``) and the open-entity index (``cases.open_entities``) are a
projection: every event is appended by :func:`_append`, which writes the case's row after it in the
same statement, so the row can never say anything its events do not.

How a case comes to be (:func:`link`): a ``review`` decision (the decision-log writer calls
:func:`link_batch` in the transaction that commits the decisions), a failed step-up challenge (the
outcome endpoint) or a fraud chargeback of an allowed payment (:func:`sync`) joins the open case of
its card or its customer, or opens one. The entity keys of open cases are unique
(``cases.open_entities``), and :func:`link` takes a transaction-level advisory lock per entity first,
so two processes linking payments of one card at once end with one case.

The projection is kept by the one reducer :func:`apply` (the row after an event), written with the
event in one statement; :func:`fold` (all of a case's events) and :func:`rebuild` (every case)
replay the same reducer, which is how the tests prove the rows are what the events say.

Priority and due time are decided when a decision is linked (from the settings' tiers), and
written into that event, so replaying the events gives the same row whatever the settings are now.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from riskloop.core.config import CasePriority, Settings, get_settings
from riskloop.core.money import minor_to_major
from riskloop.core.subject_keys import ERASED, SubjectKeyMissing, SubjectKeys, reveal, subject_keys
from riskloop.decisions import log as decision_log

log = logging.getLogger(__name__)

SCHEMA = "cases"
EVENTS = f"{SCHEMA}.case_events"
CASES = f"{SCHEMA}.cases"
OPEN_ENTITIES = f"{SCHEMA}.open_entities"
OUTCOMES = f"{decision_log.SCHEMA}.decision_outcomes"

STATUSES = ("open", "in_review", "closed")
DISPOSITIONS = ("fraud_confirmed", "legitimate", "inconclusive")
SOURCES = ("review", "step_up_failed", "chargeback")
OUTCOMES_ALLOWED = ("passed", "failed", "abandoned")
SYSTEM = "system:riskloop"

CASE_COLUMNS = ("case_id", "opened_at", "source", "customer_id", "card_token", "status", "priority", "priority_rank",
                "due_at", "assignee", "claimed_at", "n_decisions", "max_score", "amount_at_risk", "n_notes",
                "disposition", "disposition_reason", "closed_at", "closed_by", "updated_at", "last_seq")
EVENT_COLUMNS = ("event_id", "seq", "case_id", "at", "actor", "kind", "decision_id", "details")


class CaseError(Exception):
    """A case action that cannot be done; ``status`` is the HTTP answer it maps to."""

    status = 400


class CaseNotFound(CaseError):
    status = 404


class CaseConflict(CaseError):
    """The case is not in a state that allows the action (claimed by someone else, closed...)."""

    status = 409


@dataclass(frozen=True)
class CaseRules:
    """What opens a case and how urgent it is: the case part of :class:`Settings`, detached so that
    the decision-log writer thread carries only this."""

    priorities: tuple[CasePriority, ...]
    open_on_step_up_failure: bool = True
    open_on_chargeback: bool = True
    # the customers' data keys the events' personal details are sealed under (None: stored unsealed)
    subject_keys: SubjectKeys | None = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "CaseRules":
        return cls(tuple(settings.cases_priorities), settings.cases_open_on_step_up_failure,
                   settings.cases_open_on_chargeback, _ring(settings))

    def tier(self, max_score: float | None, amount_at_risk: float) -> tuple[int, CasePriority]:
        """The first priority (rank 1 = most urgent) the case's highest score or amount at risk reaches."""
        for rank, p in enumerate(self.priorities, start=1):
            if (max_score is not None and max_score >= p.min_score) or amount_at_risk >= p.min_amount:
                return rank, p
        return len(self.priorities), self.priorities[-1]


# --- the projection ------------------------------------------------------------------------------

def _ring(settings: Settings) -> SubjectKeys | None:
    try:
        return subject_keys(settings)
    except SubjectKeyMissing as exc:
        log.error("case events will keep customers' details unsealed: %s", exc)
        return None


def _known(customer_id: str | None) -> str | None:
    """The customer of an event, None once erased (its key destroyed: riskloop.core.subject_keys)."""
    return None if customer_id == ERASED else customer_id


def entities_of(customer_id: str | None, card_token: str | None) -> list[str]:
    """The entity keys of a payment, sorted (the order advisory locks are taken in)."""
    customer_id = _known(customer_id)
    keys = ([f"card:{card_token}"] if card_token else []) + ([f"customer:{customer_id}"] if customer_id else [])
    return sorted(keys)


def apply(row: dict[str, Any] | None, e: dict[str, Any]) -> dict[str, Any]:
    """The case row after event ``e`` (the one reducer: :func:`fold` is it over all of a case's events)."""
    d, kind = e["details"], e["kind"]
    if kind == "opened":
        row = {"case_id": e["case_id"], "opened_at": e["at"], "source": d["source"],
               "customer_id": _known(d.get("customer_id")), "card_token": d.get("card_token"), "status": "open",
               "priority": d["priority"], "priority_rank": d["priority_rank"],
               "due_at": datetime.fromisoformat(d["due_at"]), "assignee": None, "claimed_at": None,
               "n_decisions": 0, "max_score": None, "amount_at_risk": 0.0, "n_notes": 0, "disposition": None,
               "disposition_reason": None, "closed_at": None, "closed_by": None}
    elif row is None:
        raise ValueError(f"case {e['case_id']}: event {kind} before the case was opened")
    else:
        row = dict(row)
    if kind == "decision_added":
        row["n_decisions"] += 1
        if d.get("score") is not None:
            row["max_score"] = max(row["max_score"] or 0.0, d["score"])
        row["amount_at_risk"] += d.get("amount") or 0.0
        if d.get("priority_rank") is not None and d["priority_rank"] < row["priority_rank"]:
            row.update(priority=d["priority"], priority_rank=d["priority_rank"], due_at=datetime.fromisoformat(d["due_at"]))
    elif kind == "claimed":
        row.update(status="in_review", assignee=e["actor"], claimed_at=e["at"])
    elif kind == "released":
        row.update(status="open", assignee=None, claimed_at=None)
    elif kind == "noted":
        row["n_notes"] += 1
    elif kind == "closed":
        row.update(status="closed", assignee=None, disposition=d["disposition"], disposition_reason=d["reason"],
                   closed_at=e["at"], closed_by=e["actor"])
    row.update(updated_at=e["at"], last_seq=e["seq"])
    return row


def fold(events: Iterable[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[str]]:
    """The case row and the case's entity keys, from its events in order (``seq``)."""
    row: dict[str, Any] | None = None
    entities: list[str] = []
    for e in events:
        row = apply(row, e)
        if e["kind"] in ("opened", "decision_added"):
            d = e["details"]
            entities += [k for k in entities_of(d.get("customer_id"), d.get("card_token")) if k not in entities]
    return row, entities


def events_of(conn: psycopg.Connection, case_id: uuid.UUID | str) -> list[dict[str, Any]]:
    """A case's events in order, their sealed details revealed (the customer, a note's text) or
    marked erased."""
    with conn.cursor(row_factory=dict_row) as cur:
        events = list(cur.execute(f"select {', '.join(EVENT_COLUMNS)} from {EVENTS} where case_id = %s order by seq",
                                  (case_id,)).fetchall())
    for e, details in zip(events, reveal(conn, [e["details"] for e in events]), strict=True):
        e["details"] = details
    return events


# What of an event's details is the person's, sealed under their data key: the customer on the
# events that carry one, and the free text of a note about the case's customer.
SEALED_DETAILS = {"opened": ("customer_id",), "decision_added": ("customer_id",), "noted": ("text",)}


def _stored_details(conn: psycopg.Connection, keys: SubjectKeys | None, kind: str, customer_id: str | None,
                    details: dict[str, Any]) -> dict[str, Any]:
    fields = SEALED_DETAILS.get(kind)
    customer_id = _known(customer_id)
    if keys is None or not fields or not customer_id or not any(details.get(f) is not None for f in fields):
        return details
    key_id, aead = keys.keys_for(conn, [customer_id])[customer_id]  # cached: the log writer sealed it first
    return keys.seal(details, key_id, aead, fields=fields)


_ROW_COLUMNS = [c for c in CASE_COLUMNS if c != "last_seq"]
# One statement per event: the event, the case row after it (last_seq from the event), the open-entity
# keys it adds (an entity another open case holds stays there) or, on close, drops. One round trip, so
# a review decision costs the log writer a few statements, not a re-read of the case.
_APPEND = f"""
with e as (
    insert into {EVENTS} (event_id, case_id, at, actor, kind, decision_id, details)
    values (%(event_id)s, %(case_id)s, %(at)s, %(actor)s, %(kind)s, %(decision_id)s, %(details)s) returning seq
), c as (
    insert into {CASES} ({', '.join(CASE_COLUMNS)})
    values ({', '.join(f'%({c})s' for c in _ROW_COLUMNS)}, (select seq from e))
    on conflict (case_id) do update set {', '.join(f'{c} = excluded.{c}' for c in CASE_COLUMNS if c != 'case_id')}
    returning case_id
), gone as (
    delete from {OPEN_ENTITIES} where %(closing)s and case_id = %(case_id)s
), added as (
    insert into {OPEN_ENTITIES} (entity, case_id) select unnest(%(entities)s::text[]), c.case_id from c
    on conflict (entity) do nothing
)
select seq from e
"""


def _append(conn: psycopg.Connection, row: dict[str, Any] | None, case_id: uuid.UUID | str, kind: str, actor: str,
            details: dict[str, Any] | None = None, decision_id: Any = None, at: datetime | None = None,
            keys: SubjectKeys | None = None) -> dict[str, Any]:
    """Append one event to a case whose current row is ``row`` (None for ``opened``; the caller read
    it under a lock), and write the row :func:`apply` makes of it: the caller's transaction. With
    ``keys``, the event's personal details (:data:`SEALED_DETAILS`) are stored sealed."""
    event = {"event_id": uuid.uuid4(), "case_id": case_id, "at": at or datetime.now(UTC), "actor": actor,
             "kind": kind, "decision_id": decision_id, "details": details or {}, "seq": None}
    new = apply(row, event)
    entities = entities_of(event["details"].get("customer_id"), event["details"].get("card_token")) \
        if kind in ("opened", "decision_added") else []
    # a decision's own customer (a card's case can gather several), or the case's for a note
    owner = event["details"].get("customer_id") if kind in ("opened", "decision_added") else new.get("customer_id")
    stored = _stored_details(conn, keys, kind, owner, event["details"])
    params = {**{c: new[c] for c in _ROW_COLUMNS}, **event, "details": Jsonb(stored),
              "closing": kind == "closed", "entities": entities}
    new["last_seq"] = conn.execute(_APPEND, params).fetchone()[0]
    return new


def rebuild(conn: psycopg.Connection) -> int:
    """Rewrite every case row and the open-entity index from the events (after a restore, or to
    prove the projection): the events are the truth."""
    # In the order the cases were opened: an entity two open cases touch stays with the first, as it did.
    ids = [r[0] for r in conn.execute(f"select case_id from {EVENTS} group by case_id order by min(seq)").fetchall()]
    conn.execute(f"delete from {OPEN_ENTITIES}")
    upsert = (f"insert into {CASES} ({', '.join(CASE_COLUMNS)}) values ({', '.join(['%s'] * len(CASE_COLUMNS))}) "
              "on conflict (case_id) do update set "
              + ", ".join(f"{c} = excluded.{c}" for c in CASE_COLUMNS if c != "case_id"))
    for case_id in ids:
        row, entities = fold(events_of(conn, case_id))
        assert row is not None
        conn.execute(upsert, tuple(row[c] for c in CASE_COLUMNS))
        if row["status"] != "closed":
            conn.execute(f"insert into {OPEN_ENTITIES} (entity, case_id) select unnest(%s::text[]), %s "
                         "on conflict (entity) do nothing", (entities, case_id))
    return len(ids)


# --- opening and joining cases -------------------------------------------------------------------

def _amount(request: dict[str, Any]) -> float:
    try:
        return minor_to_major(int(request["amount_minor"]), str(request.get("currency") or ""))
    except (KeyError, TypeError, ValueError):
        return 0.0


# Whether the decision is linked already, and the oldest open case of any of its entity keys (one row, always).
_LOOKUP = f"""
select d.case_id as done, {', '.join(f'c.{c}' for c in CASE_COLUMNS)}
from (select 1) as one
left join lateral (select case_id from {EVENTS} where decision_id = %(decision_id)s and kind = 'decision_added') d
    on true
left join lateral (select c.* from {OPEN_ENTITIES} e join {CASES} c using (case_id) where e.entity = any(%(keys)s)
                   order by c.opened_at limit 1) c on true
"""


def link(conn: psycopg.Connection, rules: CaseRules, decision: dict[str, Any], source: str,
         actor: str = SYSTEM) -> uuid.UUID | None:
    """Add a decision to the open case of its card or customer, or open one; returns the case id.
    Idempotent: a decision already linked returns its case. Runs in the caller's transaction."""
    req = decision.get("request") or {}
    customer_id, card_token = req.get("customer_id"), req.get("card_token")
    keys = entities_of(customer_id, card_token)
    if not keys:
        log.warning("decision %s has neither card nor customer: no case", decision["decision_id"])
        return None
    conn.execute("select pg_advisory_xact_lock(hashtextextended('riskloop case ' || k, 0)) "
                 "from unnest(%s::text[]) with ordinality as t(k, i) order by i", (keys,))
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(_LOOKUP, {"decision_id": decision["decision_id"], "keys": keys}).fetchone()
    if found["done"] is not None:
        return found["done"]
    now = datetime.now(UTC)
    score, amount = decision.get("score"), _amount(req)
    details: dict[str, Any] = {"score": score, "amount": amount, "amount_minor": req.get("amount_minor"),
                               "currency": req.get("currency"), "decision": decision.get("decision"),
                               "source": source, "customer_id": customer_id, "card_token": card_token}
    if found["case_id"] is None:
        case_id = uuid.uuid4()
        rank, tier = rules.tier(score, amount)
        row = _append(conn, None, case_id, "opened", actor, at=now, keys=rules.subject_keys, details={
            "source": source, "customer_id": customer_id, "card_token": card_token, "priority": tier.name,
            "priority_rank": rank, "due_at": (now + timedelta(hours=tier.sla_hours)).isoformat()})
    else:
        row = {c: found[c] for c in CASE_COLUMNS}
        case_id = row["case_id"]
        scores = [x for x in (row["max_score"], score) if x is not None]
        rank, tier = rules.tier(max(scores) if scores else None, row["amount_at_risk"] + amount)
        if rank < row["priority_rank"]:  # escalate: the SLA of the higher priority, counted from the opening
            details.update(priority=tier.name, priority_rank=rank,
                           due_at=(row["opened_at"] + timedelta(hours=tier.sla_hours)).isoformat())
    _append(conn, row, case_id, "decision_added", actor, details, decision_id=decision["decision_id"], at=now,
            keys=rules.subject_keys)
    return case_id


def link_batch(conn: psycopg.Connection, rules: CaseRules, rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """The decision-log writer's step: the batch's fraud ``review`` decisions joined to cases, in
    its transaction (so a committed review decision has its case): ``(linked, failed)``. All in one
    savepoint; if that fails, one savepoint per decision, so one bad row never keeps the others from
    their cases. A failed one is logged and left to :func:`sync`; the decisions commit either way."""
    reviews = [r for r in rows if r.get("decision") == "review" and r.get("product", "fraud") == "fraud"]
    if not reviews:
        return 0, 0
    try:
        with conn.transaction():
            return sum(link(conn, rules, r, "review") is not None for r in reviews), 0
    except Exception as exc:  # noqa: BLE001 - retried row by row below
        if conn.broken:
            raise
        log.warning("linking %d review decisions failed (%s): one by one", len(reviews), exc)
    linked = failed = 0
    for r in reviews:
        try:
            with conn.transaction():
                linked += link(conn, rules, r, "review") is not None
        except Exception as exc:  # noqa: BLE001 - the decision commits anyway; sync links it later
            if conn.broken:
                raise
            failed += 1
            log.error("decision %s not linked to a case (riskloop cases sync will): %s", r.get("decision_id"), exc)
    return linked, failed


# --- analysts' actions ---------------------------------------------------------------------------

def _locked(conn: psycopg.Connection, case_id: uuid.UUID | str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"select {', '.join(CASE_COLUMNS)} from {CASES} where case_id = %s for update",
                          (case_id,)).fetchone()
    if row is None:
        raise CaseNotFound(f"no case {case_id}")
    return row


def claim(conn: psycopg.Connection, case_id: uuid.UUID | str, actor: str) -> dict[str, Any]:
    """Take an open case. The row lock makes a second, concurrent claim wait and then find it taken."""
    with conn.transaction():
        row = _locked(conn, case_id)
        if row["status"] != "open":
            who = f" by {row['assignee']}" if row["assignee"] else ""
            raise CaseConflict(f"case {case_id} is {row['status']}{who}")
        return _append(conn, row, case_id, "claimed", actor)


def release(conn: psycopg.Connection, case_id: uuid.UUID | str, actor: str) -> dict[str, Any]:
    """Give a claimed case back to the queue (only its assignee can)."""
    with conn.transaction():
        row = _locked(conn, case_id)
        if row["status"] != "in_review" or row["assignee"] != actor:
            raise CaseConflict(f"case {case_id} is {row['status']}, not claimed by {actor}")
        return _append(conn, row, case_id, "released", actor)


def note(conn: psycopg.Connection, case_id: uuid.UUID | str, actor: str, text: str,
         settings: Settings | None = None) -> dict[str, Any]:
    """Add an analyst's note. Its text is free text about the case's customer, so it is stored sealed
    under the customer's data key (riskloop.core.subject_keys): erasing the customer shreds it."""
    if not text.strip():
        raise CaseError("a note needs text")
    with conn.transaction():
        row = _locked(conn, case_id)
        if row["status"] == "closed":
            raise CaseConflict(f"case {case_id} is closed")
        return _append(conn, row, case_id, "noted", actor, {"text": text}, keys=_ring(settings or get_settings()))


def close(conn: psycopg.Connection, case_id: uuid.UUID | str, actor: str, disposition: str,
          reason: str) -> dict[str, Any]:
    """Close a case its closer has claimed, with a disposition and a reason (both required)."""
    if disposition not in DISPOSITIONS:
        raise CaseError(f"disposition must be one of {list(DISPOSITIONS)}")
    if not reason.strip():
        raise CaseError("closing a case needs a reason")
    with conn.transaction():
        row = _locked(conn, case_id)
        if row["status"] != "in_review" or row["assignee"] != actor:
            raise CaseConflict(f"case {case_id} is {row['status']}"
                               + (f" by {row['assignee']}" if row["assignee"] else "") + f": claim it first ({actor})")
        return _append(conn, row, case_id, "closed", actor, {"disposition": disposition, "reason": reason})


# --- reading ---------------------------------------------------------------------------------------

SORTS = {"priority": "priority_rank, opened_at", "age": "opened_at", "due": "due_at, priority_rank",
         "updated": "updated_at desc"}


def list_cases(conn: psycopg.Connection, *, status: list[str] | None = None, priority: str | None = None,
               assignee: str | None = None, source: str | None = None, entity: str | None = None,
               overdue: bool | None = None, sort: str = "priority", limit: int = 50,
               offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """A page of cases and the total matching; unclosed cases by default."""
    where, params = ["status = any(%s)"], [status or ["open", "in_review"]]
    for column, value in (("priority", priority), ("assignee", assignee), ("source", source)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if entity is not None:
        where.append("(customer_id = %s or card_token = %s or case_id in "
                     f"(select case_id from {OPEN_ENTITIES} where entity in (%s, %s)))")
        params += [entity, entity, f"card:{entity}", f"customer:{entity}"]
    if overdue is not None:
        where.append("(due_at < now() and status <> 'closed')" if overdue else "not (due_at < now() and status <> 'closed')")
    if sort not in SORTS:
        raise CaseError(f"sort must be one of {sorted(SORTS)}")
    cond = " and ".join(where)
    total = conn.execute(f"select count(*) from {CASES} where {cond}", params).fetchone()[0]
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"select {', '.join(CASE_COLUMNS)} from {CASES} where {cond} order by {SORTS[sort]}, "
                           "case_id limit %s offset %s", [*params, limit, offset]).fetchall()
    return list(rows), total


_DECISIONS = f"""
select l.decision_id, l.decided_at, l.decision, l.score, l.reasons, l.rules, l.features, l.model_name,
       l.model_version, l.policy_version, l.degraded, l.request, o.outcome, o.recorded_at as outcome_at,
       e.details->>'source' as linked_as, e.at as linked_at
from {EVENTS} e join {decision_log.TABLE} l using (decision_id)
left join {OUTCOMES} o using (decision_id)
where e.case_id = %s and e.kind = 'decision_added' order by l.decided_at
"""
# The entity's recent payments: the stream consumer's parsed payment webhooks, indexed per card and per
# customer (the decision log has no index on its request's entities: scanning it would read every
# decision of the window).
PAYMENTS = "realtime.payment_events"
_TIMELINE = f"""
select occurred_at, processor, event_id, customer_id, card_token, amount_minor, currency
from {PAYMENTS}
where (customer_id = any(%(customers)s) or card_token = any(%(cards)s)) and occurred_at >= %(since)s
order by occurred_at desc limit %(limit)s
"""
_EARLIER = f"""
select case_id, opened_at, source, status, priority, n_decisions, max_score, amount_at_risk, disposition,
       disposition_reason, closed_at, closed_by
from {CASES}
where case_id <> %(case_id)s and (customer_id = any(%(customers)s) or card_token = any(%(cards)s))
order by opened_at desc limit %(limit)s
"""


def get(conn: psycopg.Connection, case_id: uuid.UUID | str, *, timeline_days: int = 30,
        timeline_limit: int = 50) -> dict[str, Any]:
    """A case: its row, its events, its decisions (reasons, rules, features, step-up outcome), the
    entity's timeline (the payments of its customers and cards from ``timeline_days`` before it opened)
    and the entity's other cases with their verdicts."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"select {', '.join(CASE_COLUMNS)} from {CASES} where case_id = %s", (case_id,)).fetchone()
        if row is None:
            raise CaseNotFound(f"no case {case_id}")
        events = events_of(conn, case_id)
        decisions = cur.execute(_DECISIONS, (case_id,)).fetchall()
        for d, request in zip(decisions, reveal(conn, [d["request"] for d in decisions]), strict=True):
            d["request"] = request  # personal fields in clear, or marked erased
        _, entities = fold(events)
        params = {"case_id": case_id, "limit": timeline_limit,
                  "customers": [k.split(":", 1)[1] for k in entities if k.startswith("customer:")],
                  "cards": [k.split(":", 1)[1] for k in entities if k.startswith("card:")],
                  "since": row["opened_at"] - timedelta(days=timeline_days)}
        timeline = cur.execute(_TIMELINE, params).fetchall()
        earlier = cur.execute(_EARLIER, params).fetchall()
    return {**row, "entities": entities, "events": events, "decisions": list(decisions), "timeline": list(timeline),
            "other_cases": list(earlier)}


# --- step-up outcomes ----------------------------------------------------------------------------

def record_outcome(conn: psycopg.Connection, rules: CaseRules, decision_id: uuid.UUID | str, outcome: str,
                   actor: str, occurred_at: datetime | None = None,
                   request_id: str | None = None) -> tuple[dict[str, Any], bool]:
    """Record what the channel says about a step_up decision's challenge: ``(outcome, created)``.
    Idempotent: the same outcome again returns the stored one (created False); a different one
    raises :class:`CaseConflict` (the first word stands: outcomes are append-only). A failed
    challenge opens or joins a case when the rules say so, in the same transaction."""
    if outcome not in OUTCOMES_ALLOWED:
        raise CaseError(f"outcome must be one of {list(OUTCOMES_ALLOWED)}")
    cols = ("outcome_id", "decision_id", "outcome", "recorded_at", "occurred_at", "actor", "request_id")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        decision = decision_log.fetch(conn, str(decision_id))
        if decision is None:
            raise CaseNotFound(f"no decision {decision_id}")
        if decision["decision"] != "step_up":
            raise CaseConflict(f"decision {decision_id} is {decision['decision']}, not step_up: no challenge to report")
        cur.execute(f"insert into {OUTCOMES} (outcome_id, decision_id, outcome, occurred_at, actor, request_id) "
                    "values (%s, %s, %s, %s, %s, %s) on conflict (decision_id) do nothing",
                    (uuid.uuid4(), decision_id, outcome, occurred_at, actor, request_id))
        created = cur.rowcount == 1
        stored = cur.execute(f"select {', '.join(cols)} from {OUTCOMES} where decision_id = %s",
                             (decision_id,)).fetchone()
        if stored["outcome"] != outcome:
            raise CaseConflict(f"decision {decision_id} already has outcome {stored['outcome']} "
                               f"(recorded {stored['recorded_at'].isoformat()})")
        if created and outcome == "failed" and rules.open_on_step_up_failure:
            stored["case_id"] = link(conn, rules, decision, "step_up_failed")
    return stored, created


# --- reconciliation ------------------------------------------------------------------------------

_MISSING_REVIEWS = f"""
select l.decision_id from {decision_log.TABLE} l
where l.product = 'fraud' and l.decision = 'review' and l.decided_at >= %s
  and not exists (select 1 from {EVENTS} e where e.decision_id = l.decision_id and e.kind = 'decision_added')
"""
_MISSING_STEP_UPS = f"""
select o.decision_id from {OUTCOMES} o
where o.outcome = 'failed' and o.recorded_at >= %s
  and not exists (select 1 from {EVENTS} e where e.decision_id = o.decision_id and e.kind = 'decision_added')
"""
# A lost dispute with fraud confirmed, from either chargeback feed, of a payment the model allowed.
_CHARGEBACK_FEEDS = {
    "raw.dispute_outcomes": "select payment_id from raw.dispute_outcomes where status = 'lost' and fraud_confirmed",
    "raw.dispute_file_rows": "select payment_id from raw.dispute_file_rows where status = 'lost' and fraud_confirmed",
}
_MISSING_CHARGEBACKS = f"""
select l.decision_id from {decision_log.TABLE} l
where l.product = 'fraud' and l.decision = 'allow' and l.decided_at >= %s
  and l.request->>'transaction_id' in ({{feeds}})
  and not exists (select 1 from {EVENTS} e where e.decision_id = l.decision_id and e.kind = 'decision_added')
"""


def sync(settings: Settings, actor: str = SYSTEM) -> dict[str, int]:
    """Link every decision that should have a case and has none: review decisions (a writer whose
    case step failed), failed step-ups, and (if configured) allowed payments charged back as fraud.
    Each in its own transaction: one that fails is logged and counted, the others still link."""
    from riskloop.core import db

    rules = CaseRules.from_settings(settings)
    since = datetime.now(UTC) - timedelta(days=settings.cases_sync_lookback_days)
    todo: list[tuple[str, str]] = []
    out = {"review": 0, "step_up_failed": 0, "chargeback": 0, "failed": 0}
    with db.connect(settings, autocommit=True) as conn:
        todo += [(r[0], "review") for r in conn.execute(_MISSING_REVIEWS, (since,)).fetchall()]
        if rules.open_on_step_up_failure:
            todo += [(r[0], "step_up_failed") for r in conn.execute(_MISSING_STEP_UPS, (since,)).fetchall()]
        if rules.open_on_chargeback:
            feeds = [sql for table, sql in _CHARGEBACK_FEEDS.items()
                     if conn.execute("select to_regclass(%s)", (table,)).fetchone()[0] is not None]
            if feeds:
                sql = _MISSING_CHARGEBACKS.format(feeds=" union ".join(feeds))
                todo += [(r[0], "chargeback") for r in conn.execute(sql, (since,)).fetchall()]
        for decision_id, source in todo:
            try:
                with conn.transaction():
                    decision = decision_log.fetch(conn, str(decision_id))
                    if decision is not None and link(conn, rules, decision, source, actor) is not None:
                        out[source] += 1
            except psycopg.Error as exc:
                out["failed"] += 1
                log.error("could not link decision %s (%s) to a case: %s", decision_id, source, exc)
    log.info("cases sync: %s", out)
    return out
