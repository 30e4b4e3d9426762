"""Load benchmark of the webhook receiver: verified, durable webhooks per second on loopback.

Starts the receiver alone (``serving.webhooks:create_webhook_app``, ``--workers`` uvicorn worker
processes, each with its own group-commit writer) against the configured warehouse (``riskloop up``
first), pre-signs ``--n`` Stripe-scheme events (fresh ids, so every one is a new row), then sends
them from ``--concurrency`` concurrent senders (aiohttp keep-alive connections, spread over
``--sender-procs`` processes) and counts only 200s whose row is in ``raw.webhook_inbox``
afterwards: every answer the receiver gave was after its commit, so this is the durable rate, not
an accepted-in-memory rate. The senders share the machine with the receiver and Postgres, as they
would on a 2-core box; aiohttp rather than httpx because httpx spends several times more CPU per
request, which the receiver would then not have (the first measurements used httpx).

    python bench/webhooks_load.py --n 20000 --concurrency 16 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid

import aiohttp
import httpx
import psycopg
from proc_cpu import tree_cpu_seconds  # bench/ is on sys.path when run as a script

from riskloop.core.config import get_settings
from riskloop.core.db import dsn
from riskloop.core.signatures import sign_stripe

log = logging.getLogger("bench.webhooks")
SECRET = "whsec_bench_" + uuid.uuid4().hex


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _send(url: str, bodies: list[tuple[bytes, str]], concurrency: int) -> tuple[list[float], dict[int, int]]:
    lat: list[float] = []
    codes: dict[int, int] = {}
    it = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def worker() -> None:
            for body, sig in it:
                t0 = time.perf_counter()
                async with client.post(url, data=body, headers={"Stripe-Signature": sig,
                                                                "Content-Type": "application/json"}) as r:
                    await r.read()
                lat.append(time.perf_counter() - t0)
                codes[r.status] = codes.get(r.status, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, codes


def _send_part(args: tuple[str, list[tuple[bytes, str]], int]) -> tuple[list[float], dict[int, int]]:
    """One sender process's share (its own event loop and connections)."""
    return asyncio.run(_send(*args))


def _send_all(url: str, bodies: list[tuple[bytes, str]], concurrency: int,
              procs: int) -> tuple[list[float], dict[int, int]]:
    """``concurrency`` senders in all, over ``procs`` processes (1: in this process)."""
    if procs <= 1:
        return asyncio.run(_send(url, bodies, concurrency))
    from concurrent.futures import ProcessPoolExecutor

    parts = [(url, bodies[i::procs], max(1, concurrency // procs)) for i in range(procs)]
    lat: list[float] = []
    codes: dict[int, int] = {}
    with ProcessPoolExecutor(procs) as pool:
        for part_lat, part_codes in pool.map(_send_part, parts):
            lat += part_lat
            for k, v in part_codes.items():
                codes[k] = codes.get(k, 0) + v
    return lat, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the receiver.")
    ap.add_argument("--sender-procs", type=int, default=1, help="Processes the senders are spread over.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would be the bottleneck
    settings = get_settings()
    port = _free_port()
    env = {**os.environ, "RISKLOOP_WEBHOOK_SECRETS_STRIPE": SECRET}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "serving.webhooks:create_webhook_app", "--factory",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                               "--no-access-log", "--loop", "uvloop", "--http", "httptools",
                               "--workers", str(args.workers)], env=env)
    url = f"http://127.0.0.1:{port}/webhooks/stripe"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("receiver did not start") from None
                time.sleep(0.2)
        run = uuid.uuid4().hex[:12]
        now = int(time.time())

        def batch(prefix: str, n: int) -> list[tuple[bytes, str]]:
            out = []
            for i in range(n):
                body = json.dumps({"id": f"evt_{prefix}_{run}_{i}", "object": "event", "type": "charge.captured",
                                   "created": now, "data": {"object": {"id": f"pay_{i}", "amount": 1999,
                                                                       "currency": "eur"}}},
                                  separators=(",", ":")).encode()
                out.append((body, sign_stripe(body, SECRET, now)))
            return out

        _send_all(url, batch("warm", args.warmup), args.concurrency, args.sender_procs)
        bodies = batch("load", args.n)
        load_before = os.getloadavg()[0]
        cpu0 = tree_cpu_seconds(server.pid)
        t0 = time.perf_counter()
        lat, codes = _send_all(url, bodies, args.concurrency, args.sender_procs)
        seconds = time.perf_counter() - t0
        server_cpu = tree_cpu_seconds(server.pid) - cpu0
        with psycopg.connect(dsn(settings)) as conn:
            stored = conn.execute("select count(*) from raw.webhook_inbox where event_id like %s",
                                  (f"evt_load_{run}_%",)).fetchone()[0]
            sync = conn.execute("show synchronous_commit").fetchone()[0]
        lat.sort()
        result = {
            "n": args.n, "concurrency": args.concurrency, "seconds": round(seconds, 2),
            "durable_per_second": round(stored / seconds, 1), "status_counts": codes, "rows_stored": stored,
            "p50_ms": round(lat[len(lat) // 2] * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2),
            "receiver_cpu_ms_per_event": round(server_cpu * 1000 / args.n, 3), "synchronous_commit": sync,
            "cpus": os.cpu_count(), "workers": args.workers, "sender_procs": args.sender_procs,
            "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
