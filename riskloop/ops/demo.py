"""`make demo`: the whole risk loop on the embedded stack, timed stage by stage.

stack (with the managed `riskloop stream` consumer) → simulate → ingest DAG (load, contracts, dbt,
Feast) and train DAG (fraud + credit, MLflow registry) → serving (HTTP scoring with a decision log;
signed payment webhooks → stream → Feast online store, read back) → monitor DAG (drift) and promote
DAG (the gate). The DAG pairs run in one Airflow process each.
Every stage is the real component; the summary is read back from where the stages recorded
their results (MLflow registry, decision log, drift and promotion tables), not from memory.
Running it again reuses the stack and the simulated data and trains a new challenger.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from riskloop.core.config import WORK_ROOT, Settings
from riskloop.ops.orchestrate import clip

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    # 95 days: the fraud split takes the last 28 (train, delay, test, maturity: a week each), and
    # the 67 before them are the warm-up every input fills from: the longest look-back (days since
    # a terminal's last reported fraud) is 60 days, the 37-day risk window counts frauds of
    # terminals compromised up to 64 days earlier, and the world starts with nothing compromised.
    # A shorter world trains on inputs still filling and then reports them as drift against the
    # full ones of live traffic (the input-drift alert pages on the second run).
    days: int = 95
    customers: int = 2000
    seed: int = 42
    n_requests: int = 300
    canary_share: float = 0.5  # a new challenger decides this share of the demo's traffic
    serve_port: int = 8765
    summary_path: Path = WORK_ROOT / "demo-summary.json"


# What each stage does, for the person watching (``riskloop demo`` prints it as the stage starts).
STAGES = {
    "stack": "start Postgres, the MLflow server and the stream consumer; migrate the warehouse and Airflow",
    "simulate": "simulate the payments, ledger, disputes, KYC and credit files (reused when unchanged)",
    "ingest_and_train": "Airflow: load raw files, data contracts, dbt build, Feast materialize; "
                        "then train fraud and credit and register them in MLflow",
    "serve_and_score": "start riskloop serve; score requests over HTTP; signed webhooks through the stream",
    "monitor_and_promote": "Airflow: Evidently drift and tripwires, then the promotion gate",
    "audit_pan": "search everything riskloop wrote for a card number in clear",
}


@dataclass
class StageLog:
    """Status and wall time of each stage, in order; a failure stops the loop and is reported."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, on_change: Callable[[str, str], None] | None = None) -> Iterator[None]:
        t0 = time.perf_counter()
        if on_change:
            on_change(name, "running")
        try:
            yield
        except BaseException as exc:
            self.stages[name] = {"status": "failed", "seconds": round(time.perf_counter() - t0, 2),
                                 "error": clip(str(exc))}
            if on_change:
                on_change(name, "failed")
            raise
        self.stages[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 2)}
        if on_change:
            on_change(name, "ok")


def _simulate(settings: Settings, cfg: DemoConfig) -> dict[str, Any]:
    """Simulate once per (days, customers, seed); later runs reuse the landed files."""
    from riskloop import simulator

    landing = settings.landing
    manifest_path = landing / "manifest.json"
    wanted = {"days": cfg.days, "customers": cfg.customers, "seed": cfg.seed}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if all(manifest.get(k) == v for k, v in wanted.items()):
            log.info("reusing the simulation in %s", landing)
            return manifest
    sim = simulator.simulate(days=cfg.days, customers=cfg.customers, seed=cfg.seed)
    manifest = simulator.write(sim, landing)
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), **wanted}, default=str))
    return json.loads(manifest_path.read_text())


def _score_requests(settings: Settings, n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of the last week's transactions, as the processor would send them.

    A sample rather than the last n: those all fall in one evening, which would make the
    night/weekend flags look drifted for no reason but the sampling.
    """
    import pandas as pd

    tx = pd.read_parquet(settings.landing / "transactions.parquet")
    recent = tx[tx["TX_DATETIME"] >= tx["TX_DATETIME"].max() - pd.Timedelta(days=7)]
    from riskloop.simulator.cards import pans_for

    tail = recent.sample(n=min(n, len(recent)), random_state=seed).sort_values("TX_DATETIME")
    pans = pans_for(tail["CUSTOMER_ID"].to_numpy()) if len(tail) else []
    return [
        {
            "transaction_id": str(r.TRANSACTION_ID),
            "card_token": f"tok_{r.CUSTOMER_ID}",
            "customer_id": str(r.CUSTOMER_ID),
            "terminal_id": str(r.TERMINAL_ID),
            "amount_minor": max(1, int(round(float(r.TX_AMOUNT) * 100))),
            "currency": "EUR",
            "timestamp": pd.Timestamp(r.TX_DATETIME).tz_localize("UTC").isoformat(),
            # card-present terminals (odd ids, the 'standard' processor's) send the number: the API tokenises it
            **({"pan": pan} if int(r.TERMINAL_ID) % 2 else {}),
        }
        for r, pan in zip(tail.itertuples(index=False), pans, strict=True)
    ]


@dataclass(frozen=True)
class WebhookSecrets:
    """Throw-away signing secrets of one demo run (never written anywhere), one per scheme."""

    stripe: str = field(default_factory=lambda: "whsec_demo_" + secrets.token_hex(16))
    standard: str = field(default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())


@contextmanager
def _serving(settings: Settings, port: int, hooks: WebhookSecrets | None = None) -> Iterator[tuple[str, str]]:
    """Run `riskloop serve` as a separate process, as production would; stop it afterwards.

    The server refuses unauthenticated requests, so the demo makes a throw-away scorer key for
    this one run (never written anywhere) and yields it with the URL; with ``hooks`` its webhook
    routes verify those secrets.
    """
    import httpx

    key = secrets.token_urlsafe(32)
    env = {**os.environ, "RISKLOOP_API_KEYS": f"{key}:scorer"}
    if hooks is not None:
        env.update(RISKLOOP_WEBHOOK_SECRETS_STRIPE=hooks.stripe, RISKLOOP_WEBHOOK_SECRETS_STANDARD=hooks.standard)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    logf = open(settings.log_dir / "serving.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "riskloop", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    logf.close()
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serving exited with {proc.returncode}; see {settings.log_dir}/serving.log")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serving not ready after 180s; see {settings.log_dir}/serving.log")
            time.sleep(0.5)
        yield url, key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _start_canary(settings: Settings, cfg: DemoConfig) -> dict[str, Any]:
    """A real canary phase when training produced a new challenger: the serving process started next
    routes ``cfg.canary_share`` of the demo's requests to it, and the promotion gate judges it from the
    decision log. Its minimums are scaled to a demo (no minimum time; 80 % of the challenger decisions
    the share should bring), the bounds are the configured ones: with a few dozen decisions per arm the
    score PSI is noisy, and the gate may well refuse; that is the gate working, not the demo failing."""
    from riskloop.governance import canary

    try:
        state = canary.start(settings, settings.fraud_model_name, share=cfg.canary_share, min_minutes=0,
                             min_decisions=int(cfg.n_requests * cfg.canary_share * 0.8),
                             reason="demo: canary phase of the new challenger")
    except canary.CanaryError as exc:  # the first run: champion and challenger are one version
        return {"started": False, "reason": str(exc)}
    return {"started": True, **state.to_dict()}


def _send(url: str, requests: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Score each request over HTTP, one after another; latency is measured at the client."""
    import httpx

    latencies: list[float] = []
    decisions: dict[str, int] = {}
    errors = 0
    with httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {key}"}) as client:
        for body in requests:
            t0 = time.perf_counter()
            r = client.post("/v1/score/fraud", json=body)
            latencies.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                errors += 1
                continue
            d = r.json()["decision"]
            decisions[d] = decisions.get(d, 0) + 1
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"n": len(requests), "errors": errors, "decisions": decisions,
            "p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2), "max_ms": round(latencies[-1], 2)}


def _realtime(settings: Settings, url: str, hooks: WebhookSecrets, at: datetime, n: int = 6,
              timeout_s: float = 120.0) -> dict[str, Any]:
    """The real-time loop through the running platform: ``n`` signed payment webhooks (both
    processors, alternating) to `riskloop serve`, then the managed `riskloop stream` consumer pushes
    the card's and customer's windows; the Feast SDK reads them back until they include every event.

    The payments happen at ``at``, the simulation's clock (its end), not the wall clock: live payments
    join the payment fact and so the next run's marts and training set, whose windows are placed on
    the simulated history.

    A card and customer of this run only, so the expected values are exact whatever earlier runs
    sent: ``n`` payments in every window, the amounts' sum (all EUR). Latency is accepted (the 200)
    → first read that shows the event, polled every 50 ms.
    """
    import httpx

    from riskloop.core import windows
    from riskloop.core.signatures import Scheme, signed_headers
    from riskloop.features.store import feature_store
    from riskloop.simulator.webhooks import standard_body, stripe_body

    run = secrets.token_hex(4)
    card, customer = f"tok_demo_{run}", f"demo_{run}"
    store = feature_store(settings)
    views = {e.name: (e, windows.feature_names(e)) for e in windows.ENTITIES}
    keys = {"card": card, "customer": customer}

    def read() -> dict[str, dict[str, Any]]:
        out = {}
        for name, (e, names) in views.items():
            resp = store.get_online_features(features=[f"{windows.view_name(e)}:{f}" for f in names],
                                             entity_rows=[{e.key: keys[name]}]).to_dict()
            out[name] = {f: resp[f][0] for f in names}
        return out

    accepted: list[float] = []
    visible: dict[int, float] = {}
    amounts = [1000 + 250 * i for i in range(n)]
    with httpx.Client(base_url=url, timeout=10) as client:
        for i, amount in enumerate(amounts):
            processor: Scheme = "stripe" if i % 2 else "standard"
            ev = {"event_id": f"evt_demo_{run}_{i}", "event_type": "payment.authorized", "occurred_at": at,
                  "payment_id": f"pay_demo_{run}_{i}", "card_token": card, "customer_id": customer,
                  "terminal_id": "T-demo", "amount_minor": amount, "currency": "EUR", "dispute_id": None}
            body = stripe_body(ev) if processor == "stripe" else standard_body(ev)
            secret = hooks.stripe if processor == "stripe" else hooks.standard
            r = client.post(f"/webhooks/{processor}", content=body,
                            headers=signed_headers(processor, body, secret, int(time.time())))
            if r.status_code != 200:
                raise RuntimeError(f"webhook {i} refused by riskloop serve: {r.status_code} {r.text[:300]}")
            accepted.append(time.perf_counter())
            deadline = time.monotonic() + timeout_s
            while True:  # one at a time: each event's own latency, not the batch's
                seen = read()["card"][f"card_tx_count_{windows.WINDOWS[-1].name}"]
                if seen is not None and seen >= i + 1:
                    visible[i] = time.perf_counter() - accepted[i]
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"payment {i} not visible online after {timeout_s:.0f}s: is `riskloop stream` "
                                       f"running? see {settings.log_dir}/stream.log")
                time.sleep(0.05)
    online = read()
    expected = {name: {windows.feature_name(e, a, w): (n if a.func == "count" else sum(amounts))
                       for a in windows.AGGREGATES for w in windows.WINDOWS} for name, (e, _) in views.items()}
    latencies = sorted(visible.values())
    return {"webhooks_accepted": len(accepted), "card_token": card, "customer_id": customer,
            "online": online, "online_equals_expected": online == expected,
            "accepted_to_online_ms": {"p50": round(latencies[len(latencies) // 2] * 1000, 1),
                                      "max": round(latencies[-1] * 1000, 1)}}


def _models(settings: Settings) -> dict[str, Any]:
    from riskloop.models.registry import mlflow_client

    client = mlflow_client(settings.tracking_uri)
    out: dict[str, Any] = {}
    for name in (settings.fraud_model_name, settings.credit_model_name):
        versions = client.search_model_versions(f"name='{name}'")
        aliases = {}
        for rm in client.search_registered_models(f"name='{name}'"):
            aliases = dict(rm.aliases)
        out[name] = {
            "versions": sorted(int(v.version) for v in versions),
            "aliases": aliases,
        }
    return out


def _latest_metrics(settings: Settings, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    from riskloop.models.registry import mlflow_client

    client = mlflow_client(settings.tracking_uri)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        return {}
    latest = max(versions, key=lambda v: int(v.version))
    data = client.get_run(latest.run_id).data
    out = {"version": int(latest.version), "run_id": latest.run_id,
           **{k: round(data.metrics[k], 4) for k in keys if k in data.metrics}}
    # Which weeks the model learnt from and was tested on (the fraud split's params).
    for window in ("train", "test"):
        start, end = data.params.get(f"{window}_start"), data.params.get(f"{window}_end")
        if start and end:
            out[f"{window}_window"] = [start[:10], end[:10]]
    return out


def _latest_row(settings: Settings, sql: str) -> dict[str, Any]:
    from riskloop.core.db import connect

    with connect(settings) as conn:
        cur = conn.execute(sql)
        row = cur.fetchone()
        if row is None:
            return {}
        return {d.name: row[i] for i, d in enumerate(cur.description)}


def run_demo(settings: Settings, cfg: DemoConfig | None = None,
             on_change: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run the loop; write and return the summary. Raises after recording a failed stage."""
    from riskloop.ops import stack
    from riskloop.ops.orchestrate import ensure_airflow_db, run_dags

    cfg = cfg or DemoConfig()
    stages = StageLog()
    summary: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(), "stages": stages.stages,
                               "config": {"days": cfg.days, "customers": cfg.customers, "seed": cfg.seed}}
    t_start = time.perf_counter()
    try:
        with stages.stage("stack", on_change):
            summary["stack"] = stack.up(settings)
            ensure_airflow_db(settings)
        with stages.stage("simulate", on_change):
            manifest = _simulate(settings, cfg)
            summary["simulation"] = {k: manifest.get(k) for k in ("as_of", "row_counts", "fraud_rate")}
        as_of = str(manifest.get("as_of"))
        with stages.stage("ingest_and_train", on_change):
            # Two DAG runs in one Airflow process (what a scheduler would run back to back: the
            # ingest's online-features asset triggers the train DAG).
            runs = run_dags(settings, [("riskloop_ingest", {"landing_dir": str(settings.landing), "as_of": as_of}),
                                       ("riskloop_train", None)])
            summary["dag_runs"] = {r.dag_id: round(r.seconds, 1) for r in runs}
            summary["fraud"] = _latest_metrics(settings, settings.fraud_model_name,
                                               ("auc_roc", "average_precision", "card_precision_at_100"))
            summary["credit"] = _latest_metrics(settings, settings.credit_model_name, ("auc_roc", "brier"))
        with stages.stage("serve_and_score", on_change):
            requests = _score_requests(settings, cfg.n_requests, cfg.seed)
            scoring_started = datetime.now(timezone.utc)
            summary["canary"] = _start_canary(settings, cfg)
            hooks = WebhookSecrets()
            with _serving(settings, cfg.serve_port, hooks) as (url, key):
                summary["scoring"] = _send(url, requests, key)
                if stack.stream_listening(settings):
                    sim_end = datetime.fromisoformat(as_of) - timedelta(minutes=1)
                    summary["realtime"] = _realtime(settings, url, hooks, sim_end)
                    if not summary["realtime"]["online_equals_expected"]:
                        raise RuntimeError(f"online windows differ from the webhooks sent: {summary['realtime']}")
                else:
                    summary["realtime"] = {"skipped": "the stream consumer is not running "
                                                      "(RISKLOOP_STREAM_SERVICE=false?)"}
        with stages.stage("monitor_and_promote", on_change):
            # Drift of this run's traffic only: earlier demo runs replay the same requests.
            # Under a scheduler the drift check's asset event triggers riskloop_promote; `dag.test()`
            # runs one DAG at a time, so run it next: it gates on the model's latest drift check.
            # The summary is the fraud model's (the DAGs check and gate the credit model too when scheduled).
            fraud = settings.fraud_model_name
            runs = run_dags(settings, [("riskloop_monitor", {"since": scoring_started.isoformat(), "model_name": fraud}),
                                       ("riskloop_promote", {"model_name": fraud})])
            summary["dag_runs"].update({r.dag_id: round(r.seconds, 1) for r in runs})
            drift = _latest_row(settings, "select verdict, reason, share_drifted, n_reference, n_current, "
                                          "report_path, per_feature from monitoring.drift_reports "
                                          "order by created_at desc limit 1")
            per_feature = drift.pop("per_feature", None) or {}
            drift["drifted_features"] = sorted(k for k, v in per_feature.items() if v.get("drifted"))
            summary["drift"] = drift
            promo = _latest_row(settings, "select decision, reason, champion_version, challenger_version, "
                                          "new_champion_version, canary_verdict from governance.promotion_decisions "
                                          "order by decided_at desc limit 1")
            summary["promotion"] = promo
            if summary["canary"].get("started"):  # promoted: already ended; refused: the demo is over, stop it
                from riskloop.governance import canary

                canary.end(settings, settings.fraud_model_name, "stop", "demo over",
                           canary_id=summary["canary"]["canary_id"])
            summary["models"] = _models(settings)
        with stages.stage("audit_pan", on_change):
            # Last, once everything has written its tables, logs and artifacts: it must find no card number.
            from riskloop.ops.audit import audit_pan

            audit = audit_pan(settings)
            summary["pan_audit"] = {k: v for k, v in audit.to_dict().items() if k != "locations"}
            if not audit.clean:
                raise RuntimeError(f"PAN audit found {summary['pan_audit']['hits']} card numbers in clear")
    finally:
        summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
        summary["finished_at"] = datetime.now(timezone.utc).isoformat()
        cfg.summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
