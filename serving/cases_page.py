"""The ``/cases`` page: a static shell (no data, no secret), like ``/review``. The analyst pastes an
``analyst`` API key, kept in the tab's ``sessionStorage`` only; the page calls ``/v1/cases`` with
it as a bearer token, like any other client."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>riskloop cases</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
 table { border-collapse: collapse; margin: .5rem 0 1rem; }
 th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
 th.sortable { cursor: pointer; text-decoration: underline; }
 .overdue { color: #b00020; font-weight: bold; } .muted { color: #777; }
 #message { font-weight: bold; margin: .5rem 0; } #message.error { color: #b00020; }
 textarea { width: 40rem; max-width: 100%; height: 3.5rem; }
 section { margin-bottom: 1.5rem; } pre { margin: 0; white-space: pre-wrap; font-size: 12px; }
 fieldset { display: inline-block; border: 1px solid #ccc; margin-right: 1rem; }
</style></head>
<body>
<h1>riskloop: case queue</h1>
<section>
 <label>Analyst API key <input id="key" type="password" autocomplete="off" size="40"></label>
 <button id="load">Load</button>
 <div id="message" role="status"></div>
</section>
<section>
 <label>Status <select id="f-status"><option value="open,in_review">open + in review</option><option value="open">open</option>
  <option value="in_review">in review</option><option value="closed">closed</option></select></label>
 <label>Priority <input id="f-priority" size="4" placeholder="any"></label>
 <label>Source <select id="f-source"><option value="">any</option><option>review</option><option>step_up_failed</option>
  <option>chargeback</option></select></label>
 <label>Customer or card <input id="f-entity" size="14"></label>
 <label><input id="f-mine" type="checkbox"> mine</label>
 <label><input id="f-overdue" type="checkbox"> overdue</label>
 <button id="apply">Filter</button>
 <span id="paging"><button id="prev">&larr;</button> <span id="page-info"></span> <button id="next">&rarr;</button></span>
</section>
<section><table id="queue"><thead><tr><th class="sortable" data-sort="priority">priority</th><th>status</th>
 <th class="sortable" data-sort="age">opened (age)</th><th class="sortable" data-sort="due">due</th><th>assignee</th>
 <th>source</th><th>customer</th><th>card</th><th>decisions</th><th>max score</th><th>at risk</th><th></th></tr></thead>
 <tbody></tbody></table></section>
<section id="case" hidden>
 <h2 id="case-title"></h2>
 <table id="facts"><tbody></tbody></table>
 <button id="claim">Claim</button> <button id="release">Release</button>
 <h3>Decisions</h3>
 <table id="decisions"><thead><tr><th>decided</th><th>decision</th><th>score</th><th>amount</th><th>reason codes</th>
  <th>rules</th><th>features</th><th>step-up</th></tr></thead><tbody></tbody></table>
 <h3>Entity timeline (payments of its customers and cards)</h3>
 <table id="timeline"><thead><tr><th>when</th><th>amount</th><th>customer</th><th>card</th><th>processor</th>
  <th>event</th></tr></thead><tbody></tbody></table>
 <h3>Other cases of its customers and cards</h3>
 <table id="other-cases"><thead><tr><th>opened</th><th>source</th><th>status</th><th>priority</th><th>decisions</th>
  <th>max score</th><th>verdict</th></tr></thead><tbody></tbody></table>
 <h3>Events</h3>
 <table id="events"><thead><tr><th>when</th><th>who</th><th>what</th><th>details</th></tr></thead><tbody></tbody></table>
 <h3>Note</h3>
 <textarea id="note-text"></textarea><br><button id="note" disabled>Add note</button>
 <h3>Close</h3>
 <fieldset><legend>Disposition</legend>
  <label><input type="radio" name="disposition" value="fraud_confirmed"> fraud confirmed</label>
  <label><input type="radio" name="disposition" value="legitimate"> legitimate</label>
  <label><input type="radio" name="disposition" value="inconclusive"> inconclusive</label></fieldset>
 <br><label for="reason">Reason (required)</label><br><textarea id="reason"></textarea><br>
 <button id="close" disabled>Close case</button>
</section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = { sort: "priority", offset: 0, limit: 25, total: 0, current: null, me: null };
function say(text, error) { $("message").textContent = text; $("message").className = error ? "error" : ""; }
function cell(row, value, cls) { const td = row.insertCell(); td.textContent = value ?? ""; if (cls) td.className = cls; return td; }
function num(x, d) { return typeof x === "number" ? x.toFixed(d ?? 3) : (x ?? ""); }
function age(iso) { const h = (Date.now() - Date.parse(iso)) / 3.6e6; return h < 48 ? h.toFixed(1) + " h" : (h / 24).toFixed(1) + " d"; }
function money(minor, cur) { return minor == null ? "" : (Number(minor) / 100).toFixed(2) + " " + (cur || ""); }
async function api(path, options) {
  const key = sessionStorage.getItem("riskloop-cases-key") || "";
  const res = await fetch("/v1/cases" + path, { ...(options || {}),
    headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { throw new Error(res.status + ": " + (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))); }
  return body;
}
function query() {
  const p = new URLSearchParams();
  for (const s of $("f-status").value.split(",")) p.append("status", s);
  if ($("f-priority").value.trim()) p.set("priority", $("f-priority").value.trim());
  if ($("f-source").value) p.set("source", $("f-source").value);
  if ($("f-entity").value.trim()) p.set("entity", $("f-entity").value.trim());
  if ($("f-mine").checked && state.me) p.set("assignee", state.me);
  if ($("f-overdue").checked) p.set("overdue", "true");
  p.set("sort", state.sort); p.set("limit", state.limit); p.set("offset", state.offset);
  return p.toString();
}
async function loadQueue() {
  const r = await api("?" + query());
  state.total = r.total;
  const tbody = $("queue").tBodies[0]; tbody.replaceChildren();
  for (const c of r.cases) {
    const tr = tbody.insertRow(); tr.dataset.case = c.case_id;
    const overdue = c.status !== "closed" && Date.parse(c.due_at) < Date.now();
    cell(tr, c.priority); cell(tr, c.status); cell(tr, c.opened_at.slice(0, 16) + " (" + age(c.opened_at) + ")");
    cell(tr, c.due_at.slice(0, 16) + (overdue ? " overdue" : ""), overdue ? "overdue" : "");
    cell(tr, c.assignee); cell(tr, c.source); cell(tr, c.customer_id); cell(tr, c.card_token);
    cell(tr, c.n_decisions); cell(tr, num(c.max_score)); cell(tr, num(c.amount_at_risk, 2));
    const b = document.createElement("button"); b.textContent = "Open"; b.className = "open";
    b.onclick = () => openCase(c.case_id).catch((e) => say(e.message, true));
    tr.insertCell().append(b);
  }
  $("page-info").textContent = r.total ? (state.offset + 1) + "-" + (state.offset + r.cases.length) + " of " + r.total : "0";
  $("prev").disabled = state.offset === 0; $("next").disabled = state.offset + r.cases.length >= r.total;
  say(r.total + " case(s), sorted by " + state.sort);
}
function reasons(d) { return (d.reasons || []).map((r) => r.code + " (" + r.feature + "=" + num(r.value, 2) + ", +" + num(r.contribution, 2) + ")").join("; "); }
function features(d) { return Object.entries(d.features || {}).map(([k, v]) => k + "=" + num(v, 3)).join("\\n"); }
async function openCase(id) {
  const c = await api("/" + encodeURIComponent(id));
  state.current = c; $("case").hidden = false;
  $("case-title").textContent = "case " + c.case_id + ": " + c.priority + ", " + c.status + (c.assignee ? " (" + c.assignee + ")" : "");
  const facts = $("facts").tBodies[0]; facts.replaceChildren();
  for (const [k, v] of [["status", c.status], ["priority", c.priority], ["assignee", c.assignee], ["source", c.source],
                        ["opened", c.opened_at], ["due", c.due_at], ["entities", c.entities.join(", ")],
                        ["amount at risk", num(c.amount_at_risk, 2)], ["max score", num(c.max_score)],
                        ["disposition", c.disposition ? c.disposition + ": " + c.disposition_reason + " (" + c.closed_by + ")" : ""]]) {
    const tr = facts.insertRow(); tr.dataset.fact = k; cell(tr, k); cell(tr, v);
  }
  const dt = $("decisions").tBodies[0]; dt.replaceChildren();
  for (const d of c.decisions) {
    const tr = dt.insertRow(); tr.dataset.decision = d.decision_id;
    cell(tr, d.decided_at); cell(tr, d.decision + (d.degraded ? " (degraded)" : "")); cell(tr, num(d.score));
    cell(tr, money(d.request.amount_minor, d.request.currency)); cell(tr, reasons(d)); cell(tr, (d.rules || []).join(", "));
    const pre = document.createElement("pre"); pre.textContent = features(d); tr.insertCell().append(pre); cell(tr, d.outcome);
  }
  const tl = $("timeline").tBodies[0]; tl.replaceChildren();
  for (const t of c.timeline) {
    const tr = tl.insertRow(); cell(tr, t.occurred_at); cell(tr, money(t.amount_minor, t.currency)); cell(tr, t.customer_id);
    cell(tr, t.card_token); cell(tr, t.processor); cell(tr, t.event_id);
  }
  const oc = $("other-cases").tBodies[0]; oc.replaceChildren();
  for (const o of c.other_cases) {
    const tr = oc.insertRow(); tr.dataset.case = o.case_id; cell(tr, o.opened_at); cell(tr, o.source); cell(tr, o.status);
    cell(tr, o.priority); cell(tr, o.n_decisions); cell(tr, num(o.max_score));
    cell(tr, o.disposition ? o.disposition + ": " + o.disposition_reason + " (" + o.closed_by + ")" : "");
  }
  const ev = $("events").tBodies[0]; ev.replaceChildren();
  for (const e of c.events) {
    const tr = ev.insertRow(); tr.dataset.kind = e.kind; cell(tr, e.at); cell(tr, e.actor); cell(tr, e.kind);
    cell(tr, e.kind === "noted" ? e.details.text : e.kind === "closed" ? e.details.disposition + ": " + e.details.reason
             : e.kind === "decision_added" ? e.details.decision + " " + (e.details.source || "") : e.kind === "opened" ? e.details.priority : "");
  }
  $("claim").disabled = c.status !== "open"; $("release").disabled = c.status !== "in_review";
  $("note-text").value = ""; $("reason").value = "";
  for (const r of document.querySelectorAll("input[name=disposition]")) r.checked = false;
  updateButtons();
}
function disposition() { const r = document.querySelector("input[name=disposition]:checked"); return r ? r.value : null; }
function updateButtons() {
  const open = state.current && state.current.status !== "closed";
  $("note").disabled = !(open && $("note-text").value.trim());
  $("close").disabled = !(state.current && state.current.status === "in_review" && disposition() && $("reason").value.trim());
}
async function act(path, body, done) {
  const c = await api("/" + encodeURIComponent(state.current.case_id) + path, { method: "POST", body: JSON.stringify(body || {}) });
  if (c.assignee) state.me = c.assignee;
  await openCase(c.case_id); await loadQueue(); say(done(c));
}
$("note-text").addEventListener("input", updateButtons); $("reason").addEventListener("input", updateButtons);
for (const r of document.querySelectorAll("input[name=disposition]")) r.addEventListener("change", updateButtons);
$("claim").onclick = () => act("/claim", null, (c) => "claimed by " + c.assignee).catch((e) => say(e.message, true));
$("release").onclick = () => act("/release", null, () => "released").catch((e) => say(e.message, true));
$("note").onclick = () => act("/note", { text: $("note-text").value }, (c) => "note added (" + c.n_notes + ")").catch((e) => say(e.message, true));
$("close").onclick = () => act("/close", { disposition: disposition(), reason: $("reason").value },
                               (c) => "closed as " + c.disposition + " by " + c.closed_by).catch((e) => say(e.message, true));
for (const th of document.querySelectorAll("th.sortable")) th.onclick = () => { state.sort = th.dataset.sort; state.offset = 0; loadQueue().catch((e) => say(e.message, true)); };
$("apply").onclick = () => { state.offset = 0; loadQueue().catch((e) => say(e.message, true)); };
$("prev").onclick = () => { state.offset = Math.max(0, state.offset - state.limit); loadQueue().catch((e) => say(e.message, true)); };
$("next").onclick = () => { state.offset += state.limit; loadQueue().catch((e) => say(e.message, true)); };
$("load").onclick = () => { sessionStorage.setItem("riskloop-cases-key", $("key").value); state.offset = 0; loadQueue().catch((e) => say(e.message, true)); };
</script>
</body></html>
"""
