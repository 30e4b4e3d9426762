"""``/review``: the reviewer's page of the scoring service, and the JSON API behind it.

The page is a static shell (no data, no secret: it needs no key to load); the reviewer pastes a
``reviewer`` API key (``RISKLOOP_API_KEYS``), kept in the tab's ``sessionStorage`` only, and the
page calls ``/review/api/*`` with it as a bearer token, like any other client of the service.
Everything a reviewer sees and records goes through :mod:`riskloop.governance.review`, the functions behind
``riskloop review``: the same audit rows, the same no-self-approval rule, the same content hash.

Policy drafts and list changes (:mod:`riskloop.decisions.policy_store`) are on the same page: a
draft's changes against the live version, its attached backtest (or a "not backtested" warning)
and the shadow rules' live figures are read here, and the page approves or rejects through
``/v1/policy`` with the loaded key, so the store's one maker-checker rule decides.

The reviewer recorded is the key's principal (``name:role:key``, :mod:`riskloop.core.identity`); an
unnamed legacy key may read the page but not approve, reject or promote.
The handlers are plain ``def``: they call MLflow and download artifacts, so FastAPI runs them in
its thread pool, away from the scoring event loop.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from riskloop.core.storable import StorableModel
from serving.auth import Principal, require

log = logging.getLogger(__name__)

router = APIRouter(prefix="/review", tags=["review"])


class Verdict(StorableModel):
    reason: str = Field(..., min_length=1, description="Why (required; recorded in the audit row).")


def _settings(request: Request):
    return request.app.state.settings


@router.get("", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store",
                                       "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                  "script-src 'unsafe-inline'"})


@router.get("/api/emergency", dependencies=[Depends(require("read_review"))])
def emergency(request: Request) -> list[dict[str, Any]]:
    """The emergency stops in force (riskloop.decisions.policy_store), shown above everything else."""
    import psycopg

    from riskloop.core.db import dsn
    from riskloop.decisions.policy_store import active_emergency

    with psycopg.connect(dsn(_settings(request)), connect_timeout=3, autocommit=True) as conn:
        return active_emergency(conn)


# --- policy drafts and list changes (riskloop.decisions.policy_store): decided through /v1/policy ---

def _money_text(m: Any) -> Any:
    """A backtest's money figure ({n, amount_minor per currency}) with its text for the page."""
    from riskloop.core.money import minor_to_major

    if not (isinstance(m, dict) and "n" in m and "amount_minor" in m):
        return m
    amounts = ", ".join(f"{minor_to_major(v, c):,.2f} {c}" for c, v in sorted(m["amount_minor"].items()))
    return {**m, "text": f"{m['n']:,}" + (f" ({amounts})" if amounts else "")}


@router.get("/api/policy", dependencies=[Depends(require("read_review"))])
def policy_pending(request: Request) -> dict[str, Any]:
    """Policy drafts and list changes waiting for a second person, the versions deciding now in
    this process, and whether approving a draft requires an attached backtest."""
    from riskloop.decisions import policy_store as store
    from serving.policy_api import _conn

    st = request.app.state
    with _conn(request) as conn:
        drafts = [v for v in store.versions(conn) if v["state"] == "drafted"]
        changes = store.list_changes(conn, "drafted")
    return {"live": {"fraud": st.fraud_policy.id, "credit": st.credit_policy.id}, "drafts": drafts,
            "list_changes": changes, "require_backtest": _settings(request).policy_require_backtest}


@router.get("/api/policy/versions/{policy_id}", dependencies=[Depends(require("read_review"))])
def policy_card(request: Request, policy_id: str) -> dict[str, Any]:
    """What an approver reads: the draft against the live version (rules added, removed, changed,
    moved; settings), its newest attached backtest, the shadow rules' live figures and its history."""
    from datetime import timedelta

    from riskloop.decisions import policy_store as store
    from serving.policy_api import _conn

    st, settings = request.app.state, _settings(request)
    with _conn(request) as conn:
        product, _ = store.parse_id(policy_id)
        info = next((v for v in store.versions(conn, product) if v["id"] == policy_id), None)
        if info is None:
            raise HTTPException(status_code=404, detail=f"no stored policy {policy_id}")
        base = getattr(st, f"{product}_policy").id
        backtest = store.backtest_of(conn, policy_id)
        if backtest is not None and isinstance(backtest["report"].get("labels"), dict):
            labels = backtest["report"]["labels"]
            backtest["report"]["labels"] = {k: _money_text(v) for k, v in labels.items()}
        shadow = [s for s in store.shadow_stats(conn, timedelta(hours=24), settings.label_delay_days)
                  if s["policy_version"] in (base, policy_id)]
        return {**info, "live_id": base, "diff": store.diff(conn, policy_id, base), "backtest": backtest,
                "shadow": shadow, "history": store.history(conn, policy_id),
                "require_backtest": settings.policy_require_backtest}


@router.get("/api/pending", dependencies=[Depends(require("read_review"))])
def pending(request: Request, model: str | None = None) -> list[dict[str, Any]]:
    """Challengers that are not the champion, with their review state."""
    from riskloop.governance.review import UnknownModel
    from riskloop.governance.review import pending as pending_

    try:
        return pending_(_settings(request), model)
    except UnknownModel as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@router.get("/api/models/{name}/versions/{version}", dependencies=[Depends(require("read_review"))])
def card(request: Request, name: str, version: str) -> dict[str, Any]:
    """The version's card: metrics vs champion, drift, canary figures, gate, review history."""
    from riskloop.governance.review import ReviewError
    from riskloop.governance.review import card as card_

    try:
        return card_(_settings(request), name, version)
    except ReviewError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@router.post("/api/models/{name}/versions/{version}/{verdict}")
def decide(request: Request, name: str, version: str, verdict: Literal["approve", "reject"], body: Verdict,
           principal: Principal = Depends(require("review_model"))) -> dict[str, Any]:
    """Record an approval or a rejection by the calling reviewer (403 for the version's author, for whoever
    triggered its training, and for a version whose author riskloop never recorded)."""
    from riskloop.governance.review import ApprovalRefused, ReviewError, UnknownModel, record

    settings = _settings(request)
    try:
        approval = record(settings, name, version, "approved" if verdict == "approve" else "rejected",
                          principal, body.reason)
    except ApprovalRefused as exc:
        raise HTTPException(status_code=403, detail=str(exc)) from exc
    except UnknownModel as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except ReviewError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    return approval.to_dict()


def _require_model(settings, name: str) -> None:
    """404 for a model the registry does not know (rather than a recorded "no challenger" decision)."""
    from mlflow.exceptions import MlflowException

    from riskloop.models.registry import mlflow_client

    try:
        mlflow_client(settings.tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        raise HTTPException(status_code=404, detail=f"no registered model {name!r}") from exc


PROMOTE_JOB = "riskloop.governance.promote_job"  # run as a module in a child process, never imported here


class PromoteRequest(BaseModel):
    margin: float = Field(0.0, ge=0, description="Tolerated metric loss of the challenger (AUC ROC, AP).")
    report_id: UUID | None = Field(None, description="Gate on this recorded drift check (`riskloop monitor`); "
                                   "default: the model's latest recorded check, as the promote DAG run by hand.")


@router.post("/api/models/{name}/promote")
def promote(request: Request, name: str, body: PromoteRequest,
            principal: Principal = Depends(require("promote_model"))) -> dict[str, Any]:
    """Run the promotion gate for ``name``: the same gate as ``riskloop promote`` and the promote DAG.
    It moves ``@champion`` only if every gate passes; a refusal is a 200 with ``decision: refused``
    and its reasons (and a ``promotion_blocked`` alert). The caller is recorded as ``decided_by``.

    The gate runs as a job in a process of its own (:mod:`riskloop.governance.promote_job`), never
    in the scoring process: it rebuilds the test window through Feast and loads both models. It
    gates on a recorded drift check rather than running Evidently. ``gate_job`` in the answer
    says which process ran it and for how long."""
    import subprocess
    import sys
    import time

    from riskloop.core.config import plain_values

    settings = _settings(request)
    _require_model(settings, name)
    actor = principal.actor
    stdin = json.dumps({"settings": plain_values(settings), "model_name": name, "margin": body.margin,
                        "report_id": str(body.report_id) if body.report_id else None, "actor": actor},
                       default=str).encode()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", PROMOTE_JOB], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(stdin, timeout=settings.promotion_job_timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise HTTPException(status_code=504, detail=f"the promotion gate job (pid {proc.pid}) did not finish "
                            f"within {settings.promotion_job_timeout_s:.0f} s") from exc
    job = {"pid": proc.pid, "seconds": round(time.perf_counter() - t0, 3)}
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        log.error("promotion gate job for %s failed (pid %s, exit %s): %s", name, proc.pid, proc.returncode,
                  err.decode(errors="replace")[-4000:])
        raise HTTPException(status_code=500, detail=f"the promotion gate job failed: {tail[0]}")
    answer = json.loads(out)
    if answer["status"] != 200:
        raise HTTPException(status_code=answer["status"], detail=answer["detail"])
    log.info("promotion gate run by %s for %s in job pid %s: %s", actor, name, proc.pid,
             answer["decision"]["decision"])
    return {**answer["decision"], "gate_job": job}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>riskloop review</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
 table { border-collapse: collapse; margin: .5rem 0 1rem; }
 th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; }
 .neg { color: #b00020; } .pos { color: #1b5e20; } .muted { color: #777; }
 #message { font-weight: bold; margin: .5rem 0; } #message.error { color: #b00020; }
 textarea { width: 40rem; max-width: 100%; height: 4rem; }
 section { margin-bottom: 1.5rem; }
 #model-card { white-space: pre-wrap; max-height: 30rem; overflow: auto; background: #f6f6f6; padding: 0.5rem; }
</style></head>
<body>
<h1>riskloop: challengers awaiting review</h1>
<section>
 <label>Reviewer API key <input id="key" type="password" autocomplete="off" size="40"></label>
 <button id="load">Load</button>
 <div id="message" role="status"></div>
</section>
<section id="emergency" class="error" hidden></section>
<section><table id="pending"><thead><tr><th>model</th><th>version</th><th>champion</th><th>author</th>
 <th>review</th><th>reviewed by</th><th></th></tr></thead><tbody></tbody></table></section>
<section id="card" hidden>
 <h2 id="card-title"></h2>
 <table id="facts"><tbody></tbody></table>
 <h3>Model card</h3><pre id="model-card"></pre>
 <h3>Metrics against the champion (training run)</h3><table id="metrics"><thead><tr><th>metric</th>
  <th>this version</th><th>champion</th><th>difference</th></tr></thead><tbody></tbody></table>
 <h3>Last promotion gate (same test window)</h3><div id="gate" class="muted"></div>
 <table id="gate-metrics" hidden><thead><tr><th>metric</th><th>this version</th><th>champion</th></tr></thead>
  <tbody></tbody></table>
 <h3>Fairness by age band (a protected attribute the model never sees)</h3><div id="fairness-source" class="muted"></div>
 <table id="fairness" hidden><thead><tr><th>figure</th><th>this version</th><th>champion</th></tr></thead>
  <tbody></tbody></table>
 <h3>Drift</h3><div id="drift" class="muted"></div>
 <h3>Canary</h3><div id="canary" class="muted"></div>
 <h3>Reviews</h3><table id="reviews"><thead><tr><th>when</th><th>verdict</th><th>reviewer</th>
  <th>hash</th><th>reason</th></tr></thead><tbody></tbody></table>
 <label for="reason">Reason (required)</label><br><textarea id="reason"></textarea><br>
 <button id="approve" disabled>Approve</button> <button id="reject" disabled>Reject</button>
</section>
<h1>Policy drafts awaiting approval</h1>
<section><table id="policy-drafts"><thead><tr><th>draft</th><th>live now</th><th>author</th><th>created</th>
 <th>backtest</th><th></th></tr></thead><tbody></tbody></table></section>
<section id="policy-card" hidden>
 <h2 id="policy-title"></h2>
 <p id="policy-warning" class="neg" hidden></p>
 <table id="policy-facts"><tbody></tbody></table>
 <h3>Changes against the live version</h3><div id="policy-diff-base" class="muted"></div>
 <table id="policy-diff"><thead><tr><th>change</th><th>rule or setting</th><th>live</th><th>draft</th></tr></thead>
  <tbody></tbody></table>
 <h3>Backtest</h3><div id="bt-summary" class="muted"></div>
 <div id="backtest" hidden>
  <table id="bt-rates"><thead><tr><th>rate</th><th>before</th><th>after</th><th>difference</th></tr></thead><tbody></tbody></table>
  <table id="bt-changes"><thead><tr><th>logged</th><th>would be</th><th>decisions</th></tr></thead><tbody></tbody></table>
  <table id="bt-labels"><thead><tr><th>on matured labels</th><th>count (amount)</th></tr></thead><tbody></tbody></table>
  <div id="bt-queue"></div>
  <table id="bt-examples"><thead><tr><th>decision</th><th>at</th><th>score</th><th>amount (minor)</th><th>logged</th>
   <th>would be</th><th>rules logged</th><th>rules after</th><th>label</th></tr></thead><tbody></tbody></table>
 </div>
 <h3>Shadow rules, last 24 h (evaluated, never deciding)</h3><div id="policy-shadow-none" class="muted"></div>
 <table id="policy-shadow"><thead><tr><th>version</th><th>rule</th><th>decisions</th><th>hits</th><th>hit rate</th>
  <th>matured hits</th><th>precision</th></tr></thead><tbody></tbody></table>
 <h3>History</h3><table id="policy-history"><thead><tr><th>when</th><th>step</th><th>by</th><th>reason</th></tr></thead>
  <tbody></tbody></table>
 <label for="policy-reason">Reason</label><br><textarea id="policy-reason"></textarea><br>
 <button id="policy-approve">Approve draft</button> <button id="policy-reject" disabled>Reject draft</button>
</section>
<h1>List changes awaiting approval</h1>
<section><table id="list-changes"><thead><tr><th>change</th><th>list</th><th>change</th><th>entries</th>
 <th>first entries (entry, reason, expiry)</th><th>author</th><th>drafted</th><th></th></tr></thead><tbody></tbody></table>
 <label for="list-reason">Reason (required to reject)</label><br><textarea id="list-reason"></textarea>
</section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;
let said = 0;  // messages shown so far: a load's summary never replaces what an action said meanwhile
function say(text, error) { said++; $("message").textContent = text; $("message").className = error ? "error" : ""; }
function cell(row, value, cls) { const td = row.insertCell(); td.textContent = value ?? ""; if (cls) td.className = cls; return td; }
function fmt(x) { return typeof x === "number" ? x.toFixed(4) : (x ?? ""); }
async function api(path, options) { return call("/review/api" + path, options); }
async function call(url, options) {
  const key = sessionStorage.getItem("riskloop-review-key") || "";
  const res = await fetch(url, { ...(options || {}),
    headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { throw new Error(res.status + ": " + (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))); }
  return body;
}
async function loadEmergency() {
  const stops = await api("/emergency");
  const box = $("emergency"); box.replaceChildren(); box.hidden = stops.length === 0;
  for (const s of stops) {
    const p = document.createElement("p");
    p.textContent = "EMERGENCY STOP " + s.stop_id + ": " + s.product + " " + s.kind + " " + (s.amount_minor ?? s.value ?? "")
      + " by " + s.actor + " until " + s.expires_at + " (" + s.reason + ")";
    box.append(p);
  }
}
async function loadPending() {
  const before = said;
  await loadEmergency().catch((e) => say(e.message, true));
  const rows = await api("/pending");
  const tbody = $("pending").tBodies[0]; tbody.replaceChildren();
  for (const r of rows) {
    const tr = tbody.insertRow(); tr.dataset.model = r.model_name; tr.dataset.version = r.version;
    for (const k of ["model_name", "version", "champion_version", "author", "review", "reviewed_by"]) cell(tr, r[k]);
    const b = document.createElement("button"); b.textContent = "Open"; b.className = "open";
    b.onclick = () => openCard(r.model_name, r.version).catch((e) => say(e.message, true));
    tr.insertCell().append(b);
  }
  if (said === before) say(rows.length ? rows.length + " challenger(s)" : "no challenger awaiting review");
}
async function openCard(model, version) {
  const c = await api("/models/" + encodeURIComponent(model) + "/versions/" + encodeURIComponent(version));
  current = c; $("card").hidden = false;
  $("card-title").textContent = c.model_name + " v" + c.version;
  const facts = $("facts").tBodies[0]; facts.replaceChildren();
  for (const [k, v] of [["aliases", c.aliases.join(", ")], ["champion", c.champion_version], ["author", c.author],
                        ["created", c.created_at], ["run", c.run_id], ["content hash", c.content_hash],
                        ["params", Object.entries(c.params).map(([a, b]) => a + "=" + b).join("  ")]]) {
    const tr = facts.insertRow(); cell(tr, k); cell(tr, v);
  }
  $("model-card").textContent = c.description || "no model card: this version was registered without one";
  const mt = $("metrics").tBodies[0]; mt.replaceChildren();
  for (const [m, d] of Object.entries(c.metrics_vs_champion)) {
    const tr = mt.insertRow(); tr.dataset.metric = m;
    cell(tr, m); cell(tr, fmt(d.version)); cell(tr, fmt(d.champion)); cell(tr, (d.delta >= 0 ? "+" : "") + fmt(d.delta), d.delta >= 0 ? "pos" : "neg");
  }
  const g = c.last_gate;
  $("gate").textContent = g ? g.decision + " at " + g.decided_at + ": " + g.reason : "the gate has not evaluated this version yet";
  // Both versions' figures as the gate computed them on one test window; fairness figures apart.
  const isFair = (m) => m.startsWith("fairness_") || m.startsWith("approval_rate.");
  const gm = $("gate-metrics").tBodies[0]; gm.replaceChildren();
  const gated = g ? Object.keys(g.challenger_metrics || {}).filter((m) => !isFair(m)).sort() : [];
  for (const m of gated) {
    const tr = gm.insertRow(); tr.dataset.metric = m;
    cell(tr, m); cell(tr, fmt(g.challenger_metrics[m])); cell(tr, fmt((g.champion_metrics || {})[m]));
  }
  $("gate-metrics").hidden = gated.length === 0;
  // Fairness: the gate's figures (same window for both) when it ran, else each training run's own.
  const [mine, champ, source] = g && Object.keys(g.challenger_metrics || {}).some(isFair)
    ? [g.challenger_metrics, g.champion_metrics || {}, "as the last promotion gate computed them on one test window"]
    : [c.metrics, Object.fromEntries(Object.entries(c.metrics_vs_champion).map(([k, d]) => [k, d.champion])),
       "from each version's training run (its own test window)"];
  const fair = Object.keys(mine).filter(isFair).sort();
  const ft = $("fairness").tBodies[0]; ft.replaceChildren();
  // A band under RISKLOOP_FAIRNESS_MIN_GROUP test applications is shown, flagged, and judged by nothing.
  const small = (ms, m) => m.startsWith("approval_rate.") && ms["fairness_group_n." + m.slice(14)] < ms.fairness_min_group
    ? " (too small to judge, n=" + ms["fairness_group_n." + m.slice(14)] + ")" : "";
  for (const m of fair) { const tr = ft.insertRow(); tr.dataset.metric = m; cell(tr, m); cell(tr, fmt(mine[m]) + small(mine, m)); cell(tr, fmt(champ[m]) + small(champ, m)); }
  $("fairness").hidden = fair.length === 0;
  $("fairness-source").textContent = fair.length ? source : "no fairness figures (a fraud model, or a version trained without the attribute)";
  const d = c.drift;
  $("drift").textContent = d ? "verdict " + d.verdict + " (v" + d.model_version + ", " + d.created_at + "): " + d.reason + (d.report_path ? "  report: " + d.report_path : "") : "no drift report yet";
  const canary = Object.entries(c.canary);
  $("canary").textContent = canary.length ? canary.map(([k, v]) => k + " = " + v).join("; ") : "no canary figures for this version";
  const rv = $("reviews").tBodies[0]; rv.replaceChildren();
  for (const r of c.reviews) { const tr = rv.insertRow(); cell(tr, r.decided_at); cell(tr, r.verdict); cell(tr, r.reviewer); cell(tr, r.content_hash.slice(0, 12)); cell(tr, r.reason); }
  $("reason").value = ""; updateButtons();
}
function updateButtons() { const ok = current && $("reason").value.trim().length > 0; $("approve").disabled = !ok; $("reject").disabled = !ok; }
async function decide(verdict) {
  const r = await api("/models/" + encodeURIComponent(current.model_name) + "/versions/" + encodeURIComponent(current.version) + "/" + verdict,
                      { method: "POST", body: JSON.stringify({ reason: $("reason").value }) });
  await openCard(current.model_name, current.version); await loadPending();
  say(r.verdict + " " + r.model_name + " v" + r.model_version + " by " + r.reviewer + " (hash " + r.content_hash.slice(0, 12) + ")");
}
// Policy drafts and list changes: read through /review/api, decided through /v1/policy as the
// reviewer whose key is loaded (the server refuses the author of a change, 403).
let policyCard = null;
const DONE = { approve: "approved", reject: "rejected" };
const pct = (x) => typeof x === "number" ? (100 * x).toFixed(2) + " %" : "n/a";
const json = (x) => x === undefined || x === null ? "" : JSON.stringify(x);
async function loadPolicy() {
  const p = await api("/policy");
  const tbody = $("policy-drafts").tBodies[0]; tbody.replaceChildren();
  for (const d of p.drafts) {
    const tr = tbody.insertRow(); tr.dataset.policy = d.id;
    cell(tr, d.id); cell(tr, p.live[d.product]); cell(tr, d.author); cell(tr, d.created_at);
    cell(tr, d.backtest_seq ? "attached" : "not backtested", d.backtest_seq ? "" : "neg");
    const b = document.createElement("button"); b.textContent = "Open"; b.className = "open";
    b.onclick = () => openPolicy(d.id).catch((e) => say(e.message, true));
    tr.insertCell().append(b);
  }
  const lt = $("list-changes").tBodies[0]; lt.replaceChildren();
  for (const c of p.list_changes) {
    const tr = lt.insertRow(); tr.dataset.change = c.change_id;
    cell(tr, c.change_id); cell(tr, c.list_name + " (" + c.kind + ")"); cell(tr, c.op); cell(tr, c.n_entries);
    cell(tr, c.sample.map((e) => e.filter((x) => x !== null).join(", ")).join("; ") + (c.n_entries > c.sample.length ? "; ..." : ""));
    cell(tr, c.author); cell(tr, c.at);
    const td = tr.insertCell();
    for (const [label, step] of [["Approve", "approve"], ["Reject", "reject"]]) {
      const b = document.createElement("button"); b.textContent = label; b.className = step;
      b.onclick = () => decideList(c.change_id, step).catch((e) => say(e.message, true));
      td.append(b, " ");
    }
  }
}
async function openPolicy(id) {
  const c = await api("/policy/versions/" + encodeURIComponent(id));
  policyCard = c; $("policy-card").hidden = false;
  $("policy-title").textContent = c.id + " (" + c.state + ")";
  const bt = c.backtest;
  $("policy-warning").hidden = !!bt;
  $("policy-warning").textContent = bt ? "" : "NOT BACKTESTED: nobody has replayed history under this draft"
    + (c.require_backtest ? "; approval requires a backtest (riskloop policy backtest " + c.id + " --from ... --to ... --attach)."
                          : ". Approving it is allowed, but blind.");
  const facts = $("policy-facts").tBodies[0]; facts.replaceChildren();
  for (const [k, v] of [["author", c.author], ["drafted", c.created_at], ["digest", c.digest], ["live now", c.live_id]]) {
    const tr = facts.insertRow(); cell(tr, k); cell(tr, v);
  }
  const d = c.diff;
  $("policy-diff-base").textContent = "against " + d.base + ", the version deciding now";
  const dt = $("policy-diff").tBodies[0]; dt.replaceChildren();
  const row = (kind, name, before, after) => { const tr = dt.insertRow(); tr.dataset.change = kind; tr.dataset.name = name;
    cell(tr, kind, kind === "removed" ? "neg" : kind === "added" ? "pos" : ""); cell(tr, name); cell(tr, json(before)); cell(tr, json(after)); };
  for (const r of d.rules_added) row("added", r.id, null, r);
  for (const r of d.rules_removed) row("removed", r.id, r, null);
  for (const r of d.rules_changed) row("changed", r.id, r.before, r.after);
  for (const id of d.rules_moved) row("moved", id, null, null);
  for (const x of d.settings_changed) row("setting", x.key, x.before, x.after);
  if (!dt.rows.length) { const tr = dt.insertRow(); cell(tr, "no change against the live version"); }
  $("backtest").hidden = !bt;
  if (bt) {
    const r = bt.report;
    $("bt-summary").textContent = r.policy_id + " on " + r.period_from + " to " + r.period_to + ": " + r.n_changed + " of "
      + r.n_decisions + " decisions change" + ((r.list_changes || []).length ? ", with drafted list change(s) "
      + r.list_changes.join(", ") : "") + " (attached by " + bt.actor + " at " + bt.at + ")";
    const rt = $("bt-rates").tBodies[0]; rt.replaceChildren();
    for (const k of ["approval", "review", "deny"]) {
      const b = r.rates.before[k], a = r.rates.after[k], tr = rt.insertRow(); tr.dataset.rate = k;
      cell(tr, k); cell(tr, pct(b)); cell(tr, pct(a));
      cell(tr, typeof a === "number" && typeof b === "number" ? (a - b >= 0 ? "+" : "") + pct(a - b) : "n/a");
    }
    const ct = $("bt-changes").tBodies[0]; ct.replaceChildren();
    for (const [from, to] of Object.entries(r.matrix)) for (const [into, n] of Object.entries(to)) {
      if (from === into || !n) continue;
      const tr = ct.insertRow(); tr.dataset.from = from; tr.dataset.to = into; cell(tr, from); cell(tr, into); cell(tr, n);
    }
    const lb = $("bt-labels").tBodies[0]; lb.replaceChildren();
    const l = r.labels;
    for (const [k, label] of [["fraud_newly_caught", "fraud newly caught"], ["fraud_newly_missed", "fraud newly missed"],
                              ["good_newly_impacted", "good payments newly impacted"], ["good_released", "good payments released"],
                              ["fraud_caught_before", "fraud caught, logged"], ["fraud_caught_after", "fraud caught, draft"],
                              ["good_impacted_before", "good impacted, logged"], ["good_impacted_after", "good impacted, draft"]]) {
      const tr = lb.insertRow(); tr.dataset.figure = k; cell(tr, label); cell(tr, l[k] ? l[k].text : "");
    }
    const q = r.review_added_per_day;
    $("bt-queue").textContent = "review queue: " + (q.mean >= 0 ? "+" : "") + q.mean.toFixed(1) + " per day on average, "
      + (q.max >= 0 ? "+" : "") + q.max + " on the worst of " + q.days + " days; matured labels " + l.matured + ", unlabelled " + l.unlabelled;
    const ex = $("bt-examples").tBodies[0]; ex.replaceChildren();
    for (const e of r.examples) {
      const tr = ex.insertRow(); tr.dataset.decision = e.decision_id;
      for (const v of [e.decision_id, e.decided_at, fmt(e.score), e.amount_minor + " " + (e.currency || ""), e.before, e.after,
                       e.rules_before.join(", "), e.rules_after.join(", "), e.label]) cell(tr, v);
    }
  } else { $("bt-summary").textContent = "no backtest attached"; }
  const st = $("policy-shadow").tBodies[0]; st.replaceChildren();
  for (const s of c.shadow) {
    const tr = st.insertRow(); tr.dataset.rule = s.rule;
    for (const v of [s.policy_version, s.rule, s.decisions, s.hits, pct(s.hit_rate), s.matured_hits, pct(s.precision)]) cell(tr, v);
  }
  $("policy-shadow").hidden = c.shadow.length === 0;
  $("policy-shadow-none").textContent = c.shadow.length ? "" : "no shadow rule decided in the last 24 h (" + c.live_id + ", " + c.id + ")";
  const ht = $("policy-history").tBodies[0]; ht.replaceChildren();
  for (const h of c.history) { const tr = ht.insertRow(); cell(tr, h.at); cell(tr, h.kind); cell(tr, h.actor); cell(tr, h.reason); }
  $("policy-reason").value = ""; updatePolicyButtons();
}
function updatePolicyButtons() {
  const pending = policyCard && policyCard.state === "drafted";
  $("policy-approve").disabled = !pending;
  $("policy-reject").disabled = !(pending && $("policy-reason").value.trim().length > 0);
}
async function decidePolicy(step) {
  const r = await call("/v1/policy/versions/" + encodeURIComponent(policyCard.id) + "/" + step,
                       { method: "POST", body: JSON.stringify({ reason: $("policy-reason").value }) });
  await openPolicy(policyCard.id); await loadPolicy();
  say(DONE[step] + " " + r.id + " by " + r.actor + " (change " + r.seq + ")");
}
async function decideList(changeId, step) {
  const r = await call("/v1/policy/lists/changes/" + changeId + "/" + step,
                       { method: "POST", body: JSON.stringify({ reason: $("list-reason").value }) });
  await loadPolicy();
  say(DONE[step] + " list change " + r.change_id + " by " + r.actor + " (change " + r.seq + ")");
}
$("policy-reason").addEventListener("input", updatePolicyButtons);
$("policy-approve").onclick = () => decidePolicy("approve").catch((e) => say(e.message, true));
$("policy-reject").onclick = () => decidePolicy("reject").catch((e) => say(e.message, true));
$("reason").addEventListener("input", updateButtons);
$("approve").onclick = () => decide("approve").catch((e) => say(e.message, true));
$("reject").onclick = () => decide("reject").catch((e) => say(e.message, true));
$("load").onclick = () => {
  sessionStorage.setItem("riskloop-review-key", $("key").value);
  loadPending().catch((e) => say(e.message, true)).then(() => loadPolicy()).catch((e) => say(e.message, true));
};
</script>
</body></html>
"""
