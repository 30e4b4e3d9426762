"""``/review``: the reviewer's page of the scoring service, and the JSON API behind it.

The page is a static shell (no data, no secret: it needs no key to load); the reviewer pastes a
``reviewer`` API key (``RISKLOOP_API_KEYS``), kept in the tab's ``sessionStorage`` only, and the
page calls ``/review/api/*`` with it as a bearer token, like any other client of the service.
Everything a reviewer sees and records goes through :mod:`riskloop.governance.review`, the functions behind
``riskloop review``: the same audit rows, the same no-self-approval rule, the same content hash.

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
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;
function say(text, error) { $("message").textContent = text; $("message").className = error ? "error" : ""; }
function cell(row, value, cls) { const td = row.insertCell(); td.textContent = value ?? ""; if (cls) td.className = cls; return td; }
function fmt(x) { return typeof x === "number" ? x.toFixed(4) : (x ?? ""); }
async function api(path, options) {
  const key = sessionStorage.getItem("riskloop-review-key") || "";
  const res = await fetch("/review/api" + path, { ...(options || {}),
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
  say(rows.length ? rows.length + " challenger(s)" : "no challenger awaiting review");
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
$("reason").addEventListener("input", updateButtons);
$("approve").onclick = () => decide("approve").catch((e) => say(e.message, true));
$("reject").onclick = () => decide("reject").catch((e) => say(e.message, true));
$("load").onclick = () => { sessionStorage.setItem("riskloop-review-key", $("key").value); loadPending().catch((e) => say(e.message, true)); };
</script>
</body></html>
"""
