"""Load benchmark of the webhook receiver: verified, durable webhooks per second on loopback.

Starts the receiver alone (``serving.webhooks:create_webhook_app``, one uvicorn worker) in its own
process against the configured warehouse (``riskloop up`` first), pre-signs ``--n`` Stripe-scheme
events (fresh ids, so every one is a new row), then sends them from ``--concurrency`` concurrent
senders and counts only 200s whose row is in ``raw.webhook_inbox`` afterwards: every answer the
receiver gave was after its commit, so this is the durable rate, not an accepted-in-memory rate.
The senders share the machine with the receiver and Postgres, as they would on a 2-core box.

    python bench/webhooks_load.py --n 20000 --concurrency 16
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

import httpx
import psycopg

from riskloop.config import get_settings
from riskloop.db import dsn
from riskloop.webhooks import sign_stripe

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
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker() -> None:
            for body, sig in it:
                t0 = time.perf_counter()
                r = await client.post(url, content=body, headers={"Stripe-Signature": sig,
                                                                  "Content-Type": "application/json"})
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=500)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would be the bottleneck
    settings = get_settings()
    port = _free_port()
    env = {**os.environ, "RISKLOOP_WEBHOOK_SECRETS_STRIPE": SECRET}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "serving.webhooks:create_webhook_app", "--factory",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                               "--no-access-log"], env=env)
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

        asyncio.run(_send(url, batch("warm", args.warmup), args.concurrency))
        bodies = batch("load", args.n)
        t0 = time.perf_counter()
        lat, codes = asyncio.run(_send(url, bodies, args.concurrency))
        seconds = time.perf_counter() - t0
        with psycopg.connect(dsn(settings)) as conn:
            stored = conn.execute("select count(*) from raw.webhook_inbox where event_id like %s",
                                  (f"evt_load_{run}_%",)).fetchone()[0]
            sync = conn.execute("show synchronous_commit").fetchone()[0]
        lat.sort()
        result = {
            "n": args.n, "concurrency": args.concurrency, "seconds": round(seconds, 2),
            "durable_per_second": round(stored / seconds, 1), "status_counts": codes, "rows_stored": stored,
            "p50_ms": round(lat[len(lat) // 2] * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2), "synchronous_commit": sync,
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
