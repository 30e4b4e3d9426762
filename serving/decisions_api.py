"""``GET /v1/decisions/{id}``, ``POST /v1/decisions/{id}/override`` and ``POST /v1/decisions/{id}/outcome``.

A decision is read from the writer's queue while it is not yet committed (so a read right after
a score never 404s) and from ``serving.decision_log`` afterwards, together with its overrides
(``serving.decision_overrides``); a row queued in another worker is waited for briefly
(:func:`_fetch_committed`). An override needs the committed row (the override table
references it), so overriding a decision still in the queue waits briefly for the writer.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.decisions import cases, overrides
from riskloop.decisions import log as decision_log
from riskloop.decisions.policy import Policy, PolicyError, policy_by_id
from riskloop.decisions.policy_store import StoreError, policy_for_decision
from serving.auth import Principal, require
from serving.schemas import DecisionRecord, Override, OverrideRequest

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])

PENDING_WAIT_S = 2.0
COMMIT_WAIT_S = 0.5


def _connect(request: Request) -> psycopg.Connection:
    return psycopg.connect(dsn(request.app.state.settings), connect_timeout=3, autocommit=True)


def _fetch_committed(request: Request, conn: psycopg.Connection, decision_id: str) -> dict[str, Any] | None:
    """The committed row, waiting out another worker's writer: with several serving processes a
    decision may be queued in the one that scored it, not here, and its writer commits within
    about ``log_linger_s``. Only an id that is nowhere pays the whole wait before its 404."""
    deadline = time.monotonic() + max(COMMIT_WAIT_S, 4 * request.app.state.cfg.log_linger_s)
    while True:
        row = decision_log.fetch(conn, decision_id, request.app.state.settings)
        if row is not None or time.monotonic() > deadline:
            return row
        time.sleep(0.02)


def _wait_committed(request: Request, decision_id: UUID) -> None:
    """Wait briefly for this process's writer to commit the decision (what refers to it needs the row)."""
    writer = request.app.state.writer
    deadline = time.monotonic() + PENDING_WAIT_S
    while writer.pending(str(decision_id)) is not None:
        if time.monotonic() > deadline:
            raise HTTPException(status_code=409, detail="decision not yet committed to the log, retry",
                                headers={"Retry-After": "1"})
        time.sleep(0.02)


def rule_reasons(row: dict[str, Any], serving: tuple[Policy, ...] = (),
                 settings: Settings | None = None) -> list[dict[str, str]]:
    """What the reviewer reads about the rules that fired, from the policy version the row names:
    one this process serves (``serving``, wherever its file is) if it has every rule that fired,
    else that version as it was then from the policy store (an emergency rule since lifted
    included), else ``riskloop/decisions/policies/<id>.yaml``."""
    if not row.get("rules"):
        return []
    version = row.get("policy_version")
    policy = next((p for p in serving if p.id == version and {r.id for r in p.rules} >= set(row["rules"])), None)
    try:
        if policy is None and version and settings is not None:
            with psycopg.connect(dsn(settings), connect_timeout=3, autocommit=True) as conn:
                policy = policy_for_decision(conn, row)
        policy = policy or (policy_by_id(version) if version else None)
    except (PolicyError, StoreError, psycopg.Error) as exc:
        log.warning("decision %s: %s", row.get("decision_id"), exc)
    if policy is None:
        return [{"id": r, "action": "", "description": ""} for r in row["rules"]]
    return policy.explain(row["rules"], row.get("request") or {}, row.get("features") or {},
                          row.get("signals") or {}, row.get("feature_timestamps") or {})


def _record(request: Request, row: dict[str, Any], ovs: list[dict[str, Any]], persisted: bool) -> DecisionRecord:
    st = request.app.state
    reasons = rule_reasons(row, (st.fraud_policy, st.credit_policy), st.settings)
    return DecisionRecord(**row, rule_reasons=reasons, persisted=persisted,
                          overrides=[Override(**o) for o in ovs],
                          effective_decision=ovs[-1]["decision"] if ovs else row["decision"])


@router.get("/{decision_id}", response_model=DecisionRecord)
def get_decision(decision_id: UUID, request: Request,
                 _: Principal = Depends(require("read_decision"))) -> DecisionRecord:
    queued = request.app.state.writer.pending(str(decision_id))
    if queued is not None:
        return _record(request, queued, [], persisted=False)  # no override can exist before the row does
    try:
        with _connect(request) as conn:
            row = _fetch_committed(request, conn, str(decision_id))
            ovs = overrides.for_decision(conn, str(decision_id)) if row is not None else []
    except psycopg.Error as exc:
        raise HTTPException(status_code=503, detail="decision log unreachable") from exc
    if row is None:
        raise HTTPException(status_code=404, detail=f"no decision {decision_id}")
    return _record(request, row, ovs, persisted=True)


@router.post("/{decision_id}/override", response_model=Override, status_code=201)
def override_decision(decision_id: UUID, body: OverrideRequest, request: Request,
                      principal: Principal = Depends(require("override")),
                      x_request_id: str | None = Header(default=None)) -> Override:
    """Record a reviewer's new outcome; the logged decision itself is never changed."""
    _wait_committed(request, decision_id)
    try:
        with _connect(request) as conn, conn.transaction():
            row = _fetch_committed(request, conn, str(decision_id))
            if row is None:
                raise HTTPException(status_code=404, detail=f"no decision {decision_id}")
            allowed = decision_log.DECISIONS_BY_PRODUCT[row["product"]]
            if body.decision not in allowed:
                raise HTTPException(status_code=422, detail=[{
                    "loc": ["body", "decision"], "type": "value_error",
                    "msg": f"a {row['product']} decision is one of {list(allowed)}"}])
            # Serialise overrides of one decision, so previous_decision is really the previous one.
            conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (str(decision_id),))
            ovs = overrides.for_decision(conn, str(decision_id))
            out = overrides.insert(conn, {
                "override_id": uuid.uuid4(), "decision_id": decision_id,
                "overridden_at": datetime.now(UTC), "previous_decision": ovs[-1]["decision"] if ovs else row["decision"],
                "decision": body.decision, "reason": body.reason, "actor": principal.actor,
                "request_id": x_request_id})
    except psycopg.Error as exc:
        log.error("override of %s failed: %s", decision_id, exc)
        raise HTTPException(status_code=503, detail="decision log unreachable") from exc
    log.info("decision %s overridden %s -> %s by %s", decision_id, out["previous_decision"], out["decision"],
             principal.actor)
    return Override(**out)


class OutcomeRequest(BaseModel):
    outcome: Literal["passed", "failed", "abandoned"] = Field(description="How the customer's challenge ended.")
    occurred_at: AwareDatetime | None = Field(default=None, description="When it ended, by the channel's clock "
                                              "(stored beside the time riskloop recorded it).")


@router.post("/{decision_id}/outcome", status_code=201, responses={200: {"description": "Already recorded"}})
def record_outcome(decision_id: UUID, body: OutcomeRequest, request: Request,
                   principal: Principal = Depends(require("record_outcome")),
                   x_request_id: str | None = Header(default=None)) -> JSONResponse:
    """The outcome of a ``step_up`` decision's challenge, from the channel: 201 when recorded, 200
    when the same outcome was recorded before (a retry), 409 for a different one or a decision that
    is not a step_up. Append-only; a ``failed`` challenge opens or joins a case
    (``RISKLOOP_CASES_OPEN_ON_STEP_UP_FAILURE``) and is a fraud label signal."""
    _wait_committed(request, decision_id)
    settings = request.app.state.settings
    try:
        with _connect(request) as conn:
            if _fetch_committed(request, conn, str(decision_id)) is None:
                raise HTTPException(status_code=404, detail=f"no decision {decision_id}")
            stored, created = cases.record_outcome(conn, cases.CaseRules.from_settings(settings), decision_id,
                                                   body.outcome, principal.actor, body.occurred_at, x_request_id)
    except cases.CaseError as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from exc
    except psycopg.Error as exc:
        log.error("outcome of %s failed: %s", decision_id, exc)
        raise HTTPException(status_code=503, detail="decision log unreachable") from exc
    if created:
        log.info("decision %s step-up outcome %s from %s", decision_id, body.outcome, principal.actor)
    return JSONResponse(jsonable_encoder(stored), status_code=201 if created else 200)
