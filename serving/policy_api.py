"""``/v1/policy``: the policy store over HTTP (riskloop.decisions.policy_store), the same calls as
``riskloop policy``. Every change is made by the authenticated caller (never a name in the body)
and is an append-only row; the serving processes apply it within a second (serving.policy_watch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from riskloop.core.db import dsn
from riskloop.decisions import policy_store as store
from riskloop.decisions.policy import Policy
from serving.auth import Principal, require

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/policy", tags=["policy"])


class DraftBody(BaseModel):
    yaml: str = Field(description="The policy as YAML (the format of `riskloop policy export`).")
    note: str = ""


class Reason(BaseModel):
    reason: str = Field(default="", max_length=2000)


class NewList(BaseModel):
    name: str
    kind: Literal["card", "customer", "terminal", "device", "ip", "country", "bin"]
    description: str = ""


class Entries(BaseModel):
    entries: list[str] = Field(min_length=1, max_length=1_000, description="More at once: the CSV import.")
    reason: str = Field(min_length=1)
    expires_at: datetime | None = None


class Stop(BaseModel):
    kind: Literal["review_above", "deny_bin", "deny_terminal", "deny_card", "rules_only"]
    reason: str = Field(min_length=1)
    expires_in_s: float = Field(gt=0, le=30 * 86400, description="Required: an emergency rule always ends.")
    amount_minor: int | None = Field(default=None, gt=0)
    value: str | None = None
    product: Literal["fraud", "credit"] = "fraud"


@contextmanager
def _conn(request: Request) -> Iterator[psycopg.Connection]:
    try:
        with psycopg.connect(dsn(request.app.state.settings), connect_timeout=3, autocommit=True) as conn:
            yield conn
    except store.SelfApproval as exc:
        raise HTTPException(403, detail={"error": "self_approval", "detail": str(exc)}) from None
    except store.DraftInvalid as exc:
        raise HTTPException(422, detail={"error": "draft_invalid", "errors": exc.errors}) from None
    except store.StoreError as exc:
        log.warning("policy store refused: %s", exc)
        raise HTTPException(409 if "is " in str(exc) and "only" in str(exc) else 400,
                            detail={"error": "refused", "detail": str(exc)}) from None
    except psycopg.Error as exc:
        log.error("policy store unavailable: %s", exc)
        raise HTTPException(503, detail={"error": "policy_store_unavailable"}) from None


def _describe(p: Policy) -> dict[str, Any]:
    return {"id": p.id, "digest": p.digest, "seq": p.seq, "rules_only": p.rules_only,
            "rules": [r.id for r in p.rules], "shadow_rules": [r.id for r in p.rules if r.mode == "shadow"],
            "lists": {n: len(v) for n, v in p.lists.items()}}


@router.get("", dependencies=[Depends(require("read_policy"))])
def live(request: Request) -> dict[str, Any]:
    """What this process decides with now, and the emergency stops in force."""
    st = request.app.state
    with _conn(request) as conn:
        emergency = store.active_emergency(conn)
    return {"fraud": _describe(st.fraud_policy), "credit": _describe(st.credit_policy), "emergency": emergency,
            "error": st.policy_error}


@router.get("/versions", dependencies=[Depends(require("read_policy"))])
def versions(request: Request, product: str | None = None) -> list[dict[str, Any]]:
    with _conn(request) as conn:
        return store.versions(conn, product)


@router.get("/versions/{policy_id}", dependencies=[Depends(require("read_policy"))])
def version(request: Request, policy_id: str) -> dict[str, Any]:
    with _conn(request) as conn:
        return {"id": policy_id, "yaml": store.export_yaml(conn, policy_id), "history": store.history(conn, policy_id)}


@router.post("/drafts", status_code=201)
def draft(request: Request, body: DraftBody, principal: Principal = Depends(require("draft_policy"))) -> dict[str, Any]:
    """Save a draft: refused (422, every error with its field) if it names an unknown feature or
    list or compares values of the wrong type."""
    features = store.feature_catalog(request.app.state.settings)
    with _conn(request) as conn:
        p = store.draft(conn, body.yaml, principal.actor, features=features, note=body.note)
    return {"id": p.id, "digest": p.digest, "state": "drafted", "author": principal.actor}


def _step(fn: Callable[..., int], action: str) -> Callable[..., dict[str, Any]]:
    def route(request: Request, policy_id: str, body: Reason = Body(default_factory=Reason),
              principal: Principal = Depends(require("review_policy"))) -> dict[str, Any]:
        extra = ({"require_backtest": request.app.state.settings.policy_require_backtest}
                 if fn is store.approve else {})
        with _conn(request) as conn:
            seq = fn(conn, policy_id, principal.actor, body.reason, **extra)
        return {"id": policy_id, action: True, "seq": seq, "actor": principal.actor}
    return route


router.add_api_route("/versions/{policy_id}/approve", _step(store.approve, "approved"), methods=["POST"],
                     summary="Approve a draft (not its author): live in every process within a second.")
router.add_api_route("/versions/{policy_id}/reject", _step(store.reject, "rejected"), methods=["POST"],
                     summary="Reject a draft (a reason is required).")
router.add_api_route("/versions/{policy_id}/rollback", _step(store.rollback, "rolled_back"), methods=["POST"],
                     summary="Make an earlier approved (or shipped) version live again (a reason is required).")


@router.get("/lists", dependencies=[Depends(require("read_policy"))])
def lists(request: Request) -> list[dict[str, Any]]:
    with _conn(request) as conn:
        return store.lists(conn)


@router.post("/lists", status_code=201)
def create_list(request: Request, body: NewList, principal: Principal = Depends(require("edit_lists"))) -> dict[str, Any]:
    with _conn(request) as conn:
        store.create_list(conn, body.name, body.kind, principal.actor, body.description)
    return {"name": body.name, "kind": body.kind}


@router.post("/lists/{name}/entries", status_code=202)
def add_entries(request: Request, name: str, body: Entries,
                principal: Principal = Depends(require("edit_lists"))) -> dict[str, Any]:
    """Draft adding entries: live once someone other than the caller approves the change
    (``/lists/changes/{change_id}/approve``). Urgent blocks: ``/emergency``."""
    with _conn(request) as conn:
        return store.add_entries(conn, name, body.entries, body.reason, principal.actor, body.expires_at)


@router.post("/lists/{name}/entries/remove", status_code=202)
def remove_entries(request: Request, name: str, body: Entries,
                   principal: Principal = Depends(require("edit_lists"))) -> dict[str, Any]:
    """Draft removing entries: applied once someone other than the caller approves the change."""
    with _conn(request) as conn:
        return store.remove_entries(conn, name, body.entries, body.reason, principal.actor)


LIST_IMPORT_PATH = "/v1/policy/lists/import"  # one fixed path: its own body limit (serving.limits)


@router.post("/lists/import", status_code=202)
async def import_csv(request: Request, name: str = Query(..., description="The list."), reason: str = Query(""),
                     principal: Principal = Depends(require("edit_lists"))) -> dict[str, Any]:
    """A CSV body (``entry[,reason[,expires_at]]``) for list ``name``: all its rows as one drafted
    change, or none."""
    text = (await request.body()).decode("utf-8", errors="replace")
    with _conn(request) as conn:
        return store.import_csv(conn, name, text, principal.actor, reason)


@router.get("/lists/changes", dependencies=[Depends(require("read_policy"))])
def list_changes(request: Request, state: Literal["drafted", "approved", "rejected"] | None = None,
                 name: str | None = None, limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
    """List changes, newest first, each with its first entries and its decision."""
    with _conn(request) as conn:
        return store.list_changes(conn, state, name, limit)


def _list_step(fn: Callable[..., int], action: str) -> Callable[..., dict[str, Any]]:
    def route(request: Request, change_id: int, body: Reason = Body(default_factory=Reason),
              principal: Principal = Depends(require("review_policy"))) -> dict[str, Any]:
        with _conn(request) as conn:
            seq = fn(conn, change_id, principal.actor, body.reason)
        return {"change_id": change_id, action: True, "seq": seq, "actor": principal.actor}
    return route


router.add_api_route("/lists/changes/{change_id}/approve", _list_step(store.approve_list_change, "approved"),
                     methods=["POST"], summary="Approve a drafted list change (not its author): live in every "
                     "process within a second.")
router.add_api_route("/lists/changes/{change_id}/reject", _list_step(store.reject_list_change, "rejected"),
                     methods=["POST"], summary="Reject a drafted list change (a reason is required).")


@router.get("/lists/{name}/history", dependencies=[Depends(require("read_policy"))])
def list_history(request: Request, name: str, entry: str | None = None) -> list[dict[str, Any]]:
    with _conn(request) as conn:
        return store.entry_history(conn, name, entry)


@router.get("/emergency", dependencies=[Depends(require("read_policy"))])
def emergency(request: Request) -> list[dict[str, Any]]:
    with _conn(request) as conn:
        return store.active_emergency(conn)


@router.post("/emergency", status_code=201)
def emergency_stop(request: Request, body: Stop, principal: Principal = Depends(require("emergency_stop"))) -> dict:
    """Start an emergency rule: in every process within a second, until it expires or is lifted."""
    st = request.app.state
    with _conn(request) as conn:
        row = store.stop(conn, body.kind, principal.actor, body.reason, timedelta(seconds=body.expires_in_s),
                         amount_minor=body.amount_minor, value=body.value, product=body.product)
    store.alert_stop(st.settings, row)
    return row


@router.post("/emergency/{stop_id}/lift")
def emergency_lift(request: Request, stop_id: int, body: Reason,
                   principal: Principal = Depends(require("emergency_stop"))) -> dict[str, Any]:
    with _conn(request) as conn:
        seq = store.lift(conn, stop_id, principal.actor, body.reason)
    return {"stop_id": stop_id, "lifted": True, "seq": seq}


@router.get("/shadow", dependencies=[Depends(require("read_policy"))])
def shadow(request: Request, hours: float = Query(24.0, gt=0, le=24 * 90)) -> list[dict[str, Any]]:
    """Hit rate of each shadow rule over the last ``hours``, and its precision on matured labels."""
    with _conn(request) as conn:
        return store.shadow_stats(conn, timedelta(hours=hours), request.app.state.settings.label_delay_days)
