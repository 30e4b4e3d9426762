"""``/v1/cases``: the analysts' queue over HTTP, and the ``/cases`` page that works it.

Every action is :mod:`riskloop.decisions.cases` (the same functions as ``riskloop cases``): an
append-only event per change, the case row derived from them, a claim that only one of two
concurrent analysts wins. The analyst recorded is the key's principal (``name:role:key``; a legacy
unnamed key records ``analyst:<12 hex>``). Handlers are
plain ``def`` (each opens its own connection), so FastAPI runs them off the scoring event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import Field

from riskloop.core.storable import StorableModel
from riskloop.decisions import case_stats, cases
from serving.auth import Principal, require
from serving.decisions_api import _connect

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/cases", tags=["cases"])
page_router = APIRouter(tags=["cases"])


class NoteRequest(StorableModel):
    text: str = Field(..., min_length=1, max_length=10_000, description="The note (recorded in the case's events).")


class CloseRequest(StorableModel):
    disposition: Literal["fraud_confirmed", "legitimate", "inconclusive"]
    reason: str = Field(..., min_length=1, max_length=10_000, description="Why (required; recorded with the verdict).")


def _fail(exc: Exception, what: str) -> HTTPException:
    if isinstance(exc, cases.CaseError):
        return HTTPException(status_code=exc.status, detail=str(exc))
    log.error("%s failed: %s", what, exc)
    return HTTPException(status_code=503, detail="case store unreachable")


@router.get("", dependencies=[Depends(require("read_cases"))])
def list_cases(request: Request,
               status: list[Literal["open", "in_review", "closed"]] = Query(default=["open", "in_review"]),
               priority: str | None = None, assignee: str | None = None,
               source: Literal["review", "step_up_failed", "chargeback"] | None = None,
               entity: str | None = Query(default=None, description="A customer id or card token."),
               overdue: bool | None = None,
               sort: Literal["priority", "age", "due", "updated"] = "priority",
               limit: int = Query(default=50, ge=1, le=500), offset: int = Query(default=0, ge=0)) -> dict[str, Any]:
    """A page of the queue: unclosed cases by priority (then age) unless filtered or sorted otherwise."""
    try:
        with _connect(request) as conn:
            rows, total = cases.list_cases(conn, status=list(status), priority=priority, assignee=assignee,
                                           source=source, entity=entity, overdue=overdue, sort=sort, limit=limit,
                                           offset=offset)
    except (psycopg.Error, cases.CaseError) as exc:
        raise _fail(exc, "case list") from exc
    return {"cases": rows, "total": total, "limit": limit, "offset": offset}


@router.get("/stats", dependencies=[Depends(require("read_cases"))])
def stats(request: Request) -> dict[str, Any]:
    """Queue depth by priority, oldest open case, time to disposition, review precision, agreement."""
    try:
        with _connect(request) as conn:
            return case_stats.stats(conn, request.app.state.settings)
    except psycopg.Error as exc:
        raise _fail(exc, "case stats") from exc


@router.get("/{case_id}", dependencies=[Depends(require("read_cases"))])
def get_case(case_id: UUID, request: Request) -> dict[str, Any]:
    """The case with its events, its decisions (reasons, rules, features) and the entity's timeline."""
    try:
        with _connect(request) as conn:
            return cases.get(conn, case_id)
    except (psycopg.Error, cases.CaseError) as exc:
        raise _fail(exc, f"case {case_id}") from exc


def _act(request: Request, principal: Principal, what: str, case_id: UUID,
         action: Callable[[psycopg.Connection, str], dict[str, Any]]) -> dict[str, Any]:
    """Run one analyst action as the calling analyst; a refused one answers its 4xx."""
    actor = principal.actor
    try:
        with _connect(request) as conn:
            row = action(conn, actor)
    except (psycopg.Error, cases.CaseError) as exc:
        raise _fail(exc, f"{what} of case {case_id}") from exc
    log.info("case %s: %s by %s", case_id, what, actor)
    return row


@router.post("/{case_id}/claim")
def claim(case_id: UUID, request: Request, principal: Principal = Depends(require("work_cases"))) -> dict[str, Any]:
    """Take an open case (409 if someone else has it, or it is closed)."""
    return _act(request, principal, "claim", case_id, lambda conn, actor: cases.claim(conn, case_id, actor))


@router.post("/{case_id}/release")
def release(case_id: UUID, request: Request, principal: Principal = Depends(require("work_cases"))) -> dict[str, Any]:
    """Give a case you claimed back to the queue."""
    return _act(request, principal, "release", case_id, lambda conn, actor: cases.release(conn, case_id, actor))


@router.post("/{case_id}/note")
def note(case_id: UUID, body: NoteRequest, request: Request,
         principal: Principal = Depends(require("work_cases"))) -> dict[str, Any]:
    """Add a note to an unclosed case."""
    return _act(request, principal, "note", case_id, lambda conn, actor: cases.note(conn, case_id, actor, body.text))


@router.post("/{case_id}/close")
def close(case_id: UUID, body: CloseRequest, request: Request,
          principal: Principal = Depends(require("work_cases"))) -> dict[str, Any]:
    """Close a case you claimed with a disposition and a reason; the verdict becomes a label."""
    return _act(request, principal, f"close ({body.disposition})", case_id,
                lambda conn, actor: cases.close(conn, case_id, actor, body.disposition, body.reason))


@page_router.get("/cases", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    from serving.cases_page import PAGE

    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store",
                                       "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                  "script-src 'unsafe-inline'"})
