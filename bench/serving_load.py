"""Open-loop load generator for the scoring API: fixed request rate, loopback, bounded duration.

Open loop on purpose: request *i* is due at ``start + i / rate`` whatever happened to the ones
before it, and its latency is measured from that due time (not from when a busy client got round
to sending it), so a slow server shows up as latency instead of silently lowering the rate
(coordinated omission). Requests that are still unanswered at ``--timeout`` count as errors.

    RISKLOOP_API_KEYS=benchkey:scorer riskloop serve --port 8010 &
    .venv/bin/python bench/serving_load.py --url http://127.0.0.1:8010 --key benchkey \\
        --requests DIR/score_requests.jsonl --rate 100 --rate 500 --duration 60

``--requests``: ``score_requests.jsonl`` from ``riskloop simulate`` (default: built from the
landed ``webhook_events.parquet`` of the stack). Prints one JSON line per rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("serving_load")


def load_bodies(path: Path | None) -> list[dict[str, Any]]:
    if path is not None:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import pandas as pd

    from riskloop.config import get_settings
    from riskloop.simulator.score_requests import score_request_bodies

    events = get_settings().landing / "webhook_events.parquet"
    return score_request_bodies(pd.read_parquet(events))


async def run_rate(url: str, key: str, bodies: list[dict[str, Any]], rate: float, duration: float,
                   timeout: float, warmup: float) -> dict[str, Any]:
    n = int(rate * duration)
    latencies = np.full(n, math.nan)
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        # Warm the connection pool and the server (first requests pay for lazy imports).
        for body in bodies[: max(1, int(rate * warmup))]:
            await client.post("/v1/score/fraud", json=body)

        async def one(i: int, due: float) -> None:
            try:
                r = await client.post("/v1/score/fraud", json=bodies[i % len(bodies)])
                status = str(r.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                latencies[i] = time.perf_counter() - due

        tasks = []
        start = time.perf_counter() + 0.05
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        lag = time.perf_counter() - (start + (n - 1) / rate)  # >0: the generator itself fell behind
        await asyncio.gather(*tasks)
    ok = latencies[~np.isnan(latencies)] * 1000
    p50, p99, p999 = (np.percentile(ok, [50, 99, 99.9]) if len(ok) else (math.nan,) * 3)
    return {"rate": rate, "duration_s": duration, "sent": n, "ok": int(len(ok)),
            "error_rate": round(1 - len(ok) / n, 5) if n else 0.0, "statuses": statuses,
            "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "p99_9_ms": round(float(p999), 2),
            "max_ms": round(float(ok.max()), 2) if len(ok) else None, "generator_lag_s": round(lag, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8010")
    parser.add_argument("--key", required=True, help="An API key with role scorer.")
    parser.add_argument("--requests", type=Path, default=None)
    parser.add_argument("--rate", type=float, action="append", help="Requests/s (repeatable).")
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds per rate.")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds' worth of requests sent first, unmeasured.")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("loopback only: this is a latency benchmark, not a load test of a remote service")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    bodies = load_bodies(args.requests)
    log.info("%d request bodies", len(bodies))
    for rate in args.rate or [100.0]:
        result = asyncio.run(run_rate(args.url, args.key, bodies, rate, args.duration, args.timeout, args.warmup))
        print(json.dumps(result), flush=True)  # noqa: T201 - the benchmark's output


if __name__ == "__main__":
    main()
