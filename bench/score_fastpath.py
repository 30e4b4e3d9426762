"""CPU per fraud decision in process: the FastAPI route vs serving.fastpath.ScoreFastPath.

Why in process: on the shared 2-core box the open-loop HTTP figures move 3–5× with the
neighbours' jobs, and a degraded decision (online read past its timeout) is cheaper than a
scored one, so two HTTP runs are rarely comparable. Here the same app (real stack: online
read, model, rules, decision-log writer) gets the same requests as raw ASGI calls, one at a
time, with and without the fast path in its middleware stack, alternating; the figure is the
process's CPU time (all threads: the writer and the poller included) per request, and the
count of degraded answers is printed beside it. Sockets and uvicorn are not included.

    RISKLOOP_API_KEYS=benchkey-0123456789abcdef:scorer .venv/bin/python bench/score_fastpath.py \\
        --requests .riskloop/landing/score_requests.jsonl -n 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.score_fastpath")


def _app(fast: bool) -> Any:
    from serving.app import create_app
    from serving.fastpath import ScoreFastPath

    app = create_app()
    if not fast:  # the same app with the route answering every request, as before the fast path
        app.user_middleware = [m for m in app.user_middleware if m.cls is not ScoreFastPath]
    return app


async def _call(app: Any, body: bytes, key: str) -> tuple[int, dict]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/score/fraud", "raw_path": b"/v1/score/fraud", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"authorization", f"Bearer {key}".encode())]}
    sent = False
    out: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], json.loads(out["body"])


async def _run(fast: bool, bodies: list[bytes], key: str) -> dict[str, Any]:
    app = _app(fast)
    async with app.router.lifespan_context(app):
        for b in bodies[:50]:  # warm-up: pools, caches, first-call paths
            await _call(app, b, key)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        degraded = errors = 0
        for b in bodies:
            status, answer = await _call(app, b, key)
            if status != 200:
                errors += 1
            elif answer["degraded"]:
                degraded += 1
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"path": "fast path" if fast else "FastAPI route", "n": len(bodies), "errors": errors,
            "degraded": degraded, "cpu_ms_per_request": round(1000 * cpu / len(bodies), 3),
            "wall_ms_per_request": round(1000 * wall / len(bodies), 3),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=Path, default=Path(".riskloop/landing/score_requests.jsonl"))
    parser.add_argument("-n", type=int, default=2000, help="Requests per measured run.")
    parser.add_argument("--rounds", type=int, default=3, help="Route/fast-path pairs, alternating.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    key = os.environ["RISKLOOP_API_KEYS"].split(",")[0].split(":")[0]
    bodies = [line.strip().encode() for _, line in zip(range(args.n), args.requests.open(), strict=False)]
    for _ in range(args.rounds):
        for fast in (False, True):
            print(json.dumps(asyncio.run(_run(fast, bodies, key))), flush=True)  # noqa: T201 - a bench's output


if __name__ == "__main__":
    main()
