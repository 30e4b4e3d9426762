"""Open-loop load generator for the scoring API: fixed request rate, loopback, bounded duration.

Open loop on purpose: request *i* is due at ``start + i / rate`` whatever happened to the ones
before it, and its latency is measured from that due time (not from when a busy client got round
to sending it), so a slow server shows up as latency instead of silently lowering the rate
(coordinated omission). Requests that are still unanswered at ``--timeout`` count as errors.

    RISKLOOP_API_KEYS=benchkey:scorer riskloop serve --port 8010 &
    .venv/bin/python bench/serving_load.py --url http://127.0.0.1:8010 --key benchkey \\
        --requests DIR/score_requests.jsonl --rate 100 --rate 500 --rate 1000 --duration 60 --feast-port 6566

``--requests``: ``score_requests.jsonl`` from ``riskloop simulate`` (default: built from the
landed ``webhook_events.parquet`` of the stack). ``--feast-port``: also start ``feast serve``
(one worker, ``--max-requests 0``, no access log) on the stack's feature repo and, at each rate
right after the full decision, measure it fetching the same feature service for the same
entities; it is started for that measurement and stopped after it, so that its backlog never
overlaps the next decision row. Prints one JSON line per rate and target (``decision`` or ``feast_serve``), with the
load average when the run ended.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop
from loadclient import Client, HttpError  # bench/ is on sys.path when run as a script
from proc_cpu import tree_cpu_seconds

from serving.currencies import minor_to_major

log = logging.getLogger("serving_load")


def load_bodies(path: Path | None) -> list[dict[str, Any]]:
    if path is not None:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import pandas as pd

    from riskloop.core.config import get_settings
    from riskloop.simulator.score_requests import score_request_bodies

    events = get_settings().landing / "webhook_events.parquet"
    return score_request_bodies(pd.read_parquet(events))


def feast_body(service: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A scoring body → the ``feast serve`` request for the same entities and feature service (with
    the payment's amount: the service's on-demand view, ``customer_amount_ratios``, reads it)."""
    def make(body: dict[str, Any]) -> dict[str, Any]:
        return {"feature_service": service, "full_feature_names": True,
                "entities": {"customer_id": [body["customer_id"]], "terminal_id": [body["terminal_id"]],
                             "amount": [minor_to_major(body["amount_minor"], body["currency"])]}}

    return make


@contextmanager
def feast_serve(port: int) -> Iterator[str]:
    """``feast serve`` on the stack's feature repo, as riskloop configures it; stopped on exit.

    Started, awaited and stopped with the stack's own process helpers (log in <home>/logs/feast_serve.log)."""
    from riskloop.core.config import get_settings
    from riskloop.features.store import feast_env
    from riskloop.ops.stack import spawn_detached, stop_process, wait_until

    settings = get_settings()
    cmd = [str(Path(sys.executable).parent / "feast"), "--chdir", str(settings.feature_repo), "serve",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--max-requests", "0", "--no-access-log"]
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    proc = spawn_detached(settings, "feast_serve", cmd, {**os.environ, **feast_env(settings)})
    try:
        wait_until(settings, {"feast_serve": proc}, healthy, wait_s=120)
        yield url
    finally:
        stop_process(settings, "feast_serve")


async def run_rate(url: str, key: str, bodies: list[dict[str, Any]], rate: float, duration: float,
                   timeout: float, warmup: float, path: str = "/v1/score/fraud",
                   transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   timeline: Path | None = None) -> dict[str, Any]:
    n = int(rate * duration)
    latencies = np.full(n, math.nan)
    statuses: dict[str, int] = {}
    # Requests encoded up front and sent by bench/loadclient.py, not aiohttp or httpx: the
    # generator shares the 2 cores with the server and must cost it as little as possible.
    client = Client(url, path, [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")])
    payloads = [client.encode(json.dumps(transform(b) if transform else b).encode()) for b in bodies]
    try:
        # Warm the connections and the server (first requests pay for lazy imports).
        for raw in payloads[: max(1, int(rate * warmup))]:
            try:
                await client.post(raw, timeout)
            except (HttpError, OSError, TimeoutError) as exc:
                log.warning("warm-up request failed: %r", exc)

        async def one(i: int, due: float) -> None:
            try:
                code, answer = await client.post(payloads[i % len(payloads)], timeout)
                status = str(code)
                if b'"degraded":true' in answer:  # rules only: cheaper, so counted apart
                    statuses["degraded"] = statuses.get("degraded", 0) + 1
            except (HttpError, OSError, TimeoutError) as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                latencies[i] = time.perf_counter() - due

        # No cyclic garbage collection while measuring (as timeit does): the client's full collections
        # stalled its loop 80-95 ms about 35 s into every run, and open-loop timing counts a stalled
        # client as latency (the server's own log showed no such decision). Only the unanswered
        # requests' tasks are kept, so the run's garbage is freed by reference counting.
        pending: set[asyncio.Task] = set()
        gc.collect()
        gc.disable()
        try:
            cpu0 = time.process_time()
            start = time.perf_counter() + 0.05
            for i in range(n):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(i, due))
                pending.add(task)
                task.add_done_callback(pending.discard)
            lag = time.perf_counter() - (start + (n - 1) / rate)  # >0: the generator itself fell behind
            while pending:
                await asyncio.gather(*list(pending))
            generator_cpu_s = time.process_time() - cpu0
        finally:
            gc.enable()
    finally:
        client.close()
    if timeline is not None:  # latency (ms, NaN = failed) by due time: do slow answers cluster?
        timeline.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(timeline, np.column_stack([np.arange(n) / rate, latencies * 1000]), fmt="%.4f",
                   delimiter=",", header="due_s,latency_ms", comments="")
    ok = latencies[~np.isnan(latencies)] * 1000
    p50, p99, p999 = (np.percentile(ok, [50, 99, 99.9]) if len(ok) else (math.nan,) * 3)
    return {"rate": rate, "duration_s": duration, "sent": n, "ok": int(len(ok)),
            "error_rate": round(1 - len(ok) / n, 5) if n else 0.0, "statuses": statuses,
            "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "p99_9_ms": round(float(p999), 2),
            "max_ms": round(float(ok.max()), 2) if len(ok) else None, "generator_lag_s": round(lag, 3),
            # The generator shares the cores with the server: what it took is what the server lacked.
            "generator_cpu_ms_per_request": round(generator_cpu_s * 1000 / n, 3) if n else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8010")
    parser.add_argument("--key", required=True, help="An API key with role scorer.")
    parser.add_argument("--requests", type=Path, default=None)
    parser.add_argument("--rate", type=float, action="append", help="Requests/s (repeatable).")
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds per rate.")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds' worth of requests sent first, unmeasured.")
    parser.add_argument("--feast-port", type=int, default=None,
                        help="Also start `feast serve` on this port and measure it at each rate.")
    parser.add_argument("--feature-service", default="fraud_model_v1")
    parser.add_argument("--timeline", type=Path, default=None,
                        help="Directory: write each rate's per-request latencies by due time as CSV.")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="The scoring server's pid: also report its CPU ms per request (with its children), "
                        "the figure a busy shared machine does not move much.")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("loopback only: this is a latency benchmark, not a load test of a remote service")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    bodies = load_bodies(args.requests)
    log.info("%d request bodies", len(bodies))
    for rate in args.rate or [100.0]:
        targets = [("decision", args.url, "/v1/score/fraud", None)]
        if args.feast_port:
            targets.append(("feast_serve", None, "/get-online-features", feast_body(args.feature_service)))
        for target, url, path, transform in targets:
            # `feast serve` runs only for its own measurement: one saturated at rate R keeps working
            # through the requests its client gave up on, and would take the cores from the full
            # decision measured next (seen: 30 s of overload at the start of the next row).
            with feast_serve(args.feast_port) if target == "feast_serve" else _nothing() as feast_url:
                pid = args.server_pid if target == "decision" else None
                cpu0 = tree_cpu_seconds(pid) if pid else 0.0
                # uvloop: the generator's own CPU per request is what the server does not get
                # on the shared cores (generator_cpu_ms_per_request; ~0.6 ms on asyncio's loop).
                result = uvloop.run(run_rate(url or feast_url, args.key, bodies, rate, args.duration, args.timeout,
                                             args.warmup, path, transform,
                                             args.timeline / f"{target}-{rate:g}.csv" if args.timeline else None))
            result = {"target": target, **result, "loadavg_1m": round(os.getloadavg()[0], 2)}
            if pid:  # includes the warm-up requests, hence divided by all requests sent
                warm = max(1, int(rate * args.warmup))
                result["server_cpu_ms_per_request"] = round(
                    (tree_cpu_seconds(pid) - cpu0) * 1000 / (result["sent"] + warm), 3)
            print(json.dumps(result), flush=True)  # noqa: T201 - the benchmark's output


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
