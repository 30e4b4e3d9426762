"""How long a policy-store change takes to reach every process of a two-worker scoring server
under load, and whether any request fails while it does.

    # a running stack of its own (`riskloop up`, own RISKLOOP_HOME and ports), idle machine:
    PYTHONPATH=. .venv/bin/python bench/policy_apply.py --port 8011 --rate 300 --rounds 5

Starts ``python -m serving --workers 2`` on ``--port`` against the stack's warehouse, then sends
an open-loop stream of fraud scoring requests (request *i* due at ``start + i / rate``) over
keep-alive connections, each of which first asks ``/readyz`` which worker answers it. Meanwhile it
makes, ``--gap`` seconds apart: ``--rounds`` approved versions (drafted and approved by two
different actors), one approved list change the versions' rule reads, and one emergency stop
(lifted at the end). For each change and each worker process, the apply lag is the send time of
that process's last response not yet carrying the change, minus the moment the approving commit
returned (0 when its first response after the commit already carries it; the resolution is the
gap between two requests to one process, printed too). Prints one JSON line: achieved rate,
failed requests, latency p50/p99, requests per worker, apply lag p50 and max per kind of change
and per process, degraded share, load average.

The stack's live version is rolled back to what it was at the end (the bench's drafts stay in the
append-only history: run it on a stack of its own). Without a registered model the decisions are
degraded (rules only) and slower; ``degraded_share`` says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
import yaml
from loadclient import HttpError, _Conn  # bench/ is on sys.path when run as a script

from riskloop.core import db
from riskloop.core.config import get_settings
from riskloop.decisions import policy_store as store
from serving.config import ServingSettings

log = logging.getLogger("policy_apply")

KEY = f"bench-policy-{uuid.uuid4().hex[:12]}"
AUTHOR, APPROVER = "bench-policy-author", "bench-policy-approver"
LIST = "bench_apply_cards"
CARD = f"tok_bench_{uuid.uuid4().hex[:8]}"
BODY = {"card_token": CARD, "customer_id": "C-bench-apply", "terminal_id": "T-bench-apply", "amount_minor": 2_000,
        "currency": "EUR", "timestamp": "2026-12-07T10:00:00+00:00", "country": "DE"}


@dataclass
class Sent:
    sent: float
    pid: int
    status: int
    latency: float
    version: str | None = None
    rules: list[str] = field(default_factory=list)
    degraded: bool = False


@dataclass
class Change:
    kind: str  # version | list | emergency (| end: no change, the end of the last one's window)
    at: float  # monotonic time the approving commit returned
    carries: Any  # Sent -> bool


def _raw(host: str, port: int, method: str, path: str, body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class Pool:
    """Keep-alive connections, each tagged with the worker pid that answers it (``/readyz``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: deque[tuple[_Conn, int]] = deque()
        self.probe = _raw(host, port, "GET", "/readyz")

    async def get(self) -> tuple[_Conn, int]:
        while self.idle:
            conn, pid = self.idle.popleft()
            if not conn.closed:
                return conn, pid
        _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        _, body = await asyncio.wait_for(conn.request(self.probe), 30)
        return conn, json.loads(body)["checks"]["worker_pid"]

    def put(self, conn: _Conn, pid: int) -> None:
        if not conn.closed:
            self.idle.append((conn, pid))


async def load(pool: Pool, rate: float, stop: asyncio.Event, out: list[Sent], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    raw = _raw(pool.host, pool.port, "POST", "/v1/score/fraud", json.dumps(BODY).encode())
    tasks: set[asyncio.Task] = set()

    async def one(due: float) -> None:
        try:
            conn, pid = await pool.get()
        except (OSError, HttpError, asyncio.TimeoutError) as exc:
            out.append(Sent(due, 0, 599, loop.time() - due, version=str(exc)))
            return
        sent = loop.time()
        try:
            status, body = await asyncio.wait_for(conn.request(raw), timeout)
        except (HttpError, asyncio.TimeoutError) as exc:
            conn.closed = True
            out.append(Sent(sent, pid, 599, loop.time() - due, version=repr(exc)))
            return
        pool.put(conn, pid)
        row = Sent(sent, pid, status, loop.time() - due)
        if status == 200:
            b = json.loads(body)
            row.version, row.rules, row.degraded = b.get("policy_version"), b.get("rules") or [], bool(b.get("degraded"))
        out.append(row)

    start, i = loop.time(), 0
    while not stop.is_set():
        due = start + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        t = asyncio.create_task(one(due))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks, return_exceptions=True)


def _draft(conn: Any, rounds: int, i: int) -> Any:
    """Round ``i``'s version: fraud-v2 plus a rule reading the bench list, and a marker
    rule whose id names the round (so consecutive versions differ)."""
    base = store.POLICY_DIR / "fraud-v2.yaml"
    data = yaml.safe_load(base.read_text())
    data["rules"] += [{"id": "BENCH_LIST", "kind": "condition", "action": "step_up",
                       "condition": {"field": "card_token", "in_list": LIST}},
                      {"id": f"BENCH_ROUND_{i}", "kind": "terminal_in", "terminal_ids": [f"T-none-{i}"],
                       "action": "review"}]
    return store.draft(conn, yaml.safe_dump(data), AUTHOR, features=None, note=f"bench round {i + 1} of {rounds}")


def changes(settings: Any, args: argparse.Namespace, started: float) -> tuple[list[Change], str | None]:
    """Make the changes (blocking: run in a thread beside the load)."""
    made: list[Change] = []
    with db.connect(settings, autocommit=True) as conn:
        before = store.live_version(conn, "fraud")
        if not any(x["name"] == LIST for x in store.lists(conn)):
            store.create_list(conn, LIST, "card", AUTHOR, "bench/policy_apply.py")
        time.sleep(max(0.0, started + args.warmup - time.monotonic()))
        for i in range(args.rounds):
            p = _draft(conn, args.rounds, i)
            store.approve(conn, p.id, APPROVER, "bench")
            made.append(Change("version", time.monotonic(), lambda s, pid=p.id: s.version == pid))
            time.sleep(args.gap)
        change = store.add_entries(conn, LIST, [CARD], "bench", AUTHOR)
        store.approve_list_change(conn, change["change_id"], APPROVER, "bench")
        made.append(Change("list", time.monotonic(), lambda s: "BENCH_LIST" in s.rules))
        time.sleep(args.gap)
        row = store.stop(conn, "review_above", APPROVER, "bench", timedelta(minutes=10), amount_minor=1)
        tag = f"EMERGENCY_{row['stop_id']}"
        made.append(Change("emergency", time.monotonic(), lambda s: tag in s.rules))
        time.sleep(args.gap)
        made.append(Change("end", time.monotonic(), None))  # bounds the stop's window: lifted next
        store.lift(conn, row["stop_id"], APPROVER, "bench over")
        # lists stay (append-only); the bench's card is no real card
    return made, None if before is None else f"fraud-v{before}"


def lags(results: list[Sent], made: list[Change]) -> dict[str, Any]:
    ok = sorted((r for r in results if r.status == 200), key=lambda r: r.sent)
    pids = sorted({r.pid for r in ok})
    out: dict[str, Any] = {"per_process": {str(p): {} for p in pids}}
    for i, ch in enumerate(made):
        if ch.carries is None:
            continue
        until = made[i + 1].at if i + 1 < len(made) else float("inf")
        per = []
        for p in pids:
            mine = [r for r in ok if r.pid == p and ch.at - 1.0 < r.sent < until]
            late = [r.sent - ch.at for r in mine if r.sent > ch.at and not ch.carries(r)]
            lag = max(late, default=0.0)
            per.append(lag)
            out["per_process"][str(p)].setdefault(ch.kind, []).append(round(lag, 4))
        out.setdefault(ch.kind, []).extend(per)
    for kind in ("version", "list", "emergency"):
        values = out.get(kind, [])
        out[kind] = {"p50_s": round(statistics.median(values), 4) if values else None,
                     "max_s": round(max(values), 4) if values else None, "n": len(values)}
    gaps = [float(np.median(np.diff([r.sent for r in ok if r.pid == p]))) for p in pids
            if sum(r.pid == p for r in ok) > 1]
    out["resolution_s"] = round(max(gaps), 4) if gaps else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="Port for the two-worker server the bench starts.")
    parser.add_argument("--rate", type=float, default=300.0, help="Requests per second (open loop).")
    parser.add_argument("--rounds", type=int, default=5, help="Approved versions.")
    parser.add_argument("--gap", type=float, default=4.0, help="Seconds between two changes.")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds of load before the first change.")
    parser.add_argument("--timeout", type=float, default=10.0, help="A request unanswered this long failed.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()

    env = {**os.environ, "RISKLOOP_API_KEYS": f"{KEY}:scorer"}
    log_path = settings.run_dir / f"bench-policy-apply-{args.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as logf:
        server = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(args.port), "--workers", "2"],
                                  env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 300
        while len(pids) < 2:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"two workers not seen; server log {log_path}")
            try:
                pids.add(httpx.get(f"{url}/readyz", timeout=5).json()["checks"]["worker_pid"])
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        results: list[Sent] = []

        async def run() -> tuple[list[Change], str | None]:
            stop = asyncio.Event()
            loader = asyncio.create_task(load(Pool("127.0.0.1", args.port), args.rate, stop, results, args.timeout))
            try:
                return await asyncio.to_thread(changes, settings, args, time.monotonic())
            finally:
                stop.set()
                await loader

        t0 = time.monotonic()
        made, before = asyncio.run(run())
        elapsed = time.monotonic() - t0
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    with db.connect(settings, autocommit=True) as conn:
        target = before or ServingSettings().fraud_policy.stem  # none was approved: the configured file
        try:
            store.rollback(conn, target, APPROVER, "bench/policy_apply.py over: back to what was live")
        except store.StoreError as exc:
            log.warning("rollback to %s: %s", target, exc)
    ok = [r for r in results if r.status == 200]
    lat = np.array([r.latency for r in ok]) * 1000 if ok else np.array([0.0])
    print(json.dumps({
        "rate_target": args.rate, "rate_achieved": round(len(results) / elapsed, 1), "requests": len(results),
        "failed": len(results) - len(ok), "failures": sorted({f"{r.status}:{r.version}" for r in results
                                                              if r.status != 200})[:5],
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p99": round(float(np.percentile(lat, 99)), 2)},
        "workers": {str(p): sum(r.pid == p for r in ok) for p in sorted({r.pid for r in ok})},
        "apply_lag": lags(results, made), "degraded_share": round(sum(r.degraded for r in ok) / max(len(ok), 1), 4),
        "load_avg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
