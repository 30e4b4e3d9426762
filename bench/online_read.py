"""CPU of serving's direct online read, piece by piece, against the stack's online store.

The same feature-service read (``serving.online_sql``: one prepared ``UNION ALL`` over the views)
for the entities of the first ``-n`` score requests, one at a time, timed in the event loop's
thread (``time.thread_time``; the read is sequential, so nothing else runs in it meanwhile):
the query on a bare asyncpg connection, the same through an ``asyncpg.Pool`` (what serving used
before), ``SqlReader.read`` as served (connection set, timeout, key encoding, decoding), and the
key encoding and decoding alone. Run against a dev stack after ``riskloop demo``:

    .venv/bin/python bench/online_read.py --requests <home>/landing/score_requests.jsonl -n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


async def _per_call(n: int, fn: Callable[[int], Awaitable[Any]]) -> float:
    """Microseconds of this thread's CPU per call of ``fn(i)``, i in 0..n-1."""
    t0 = time.thread_time_ns()
    for i in range(n):
        await fn(i)
    return (time.thread_time_ns() - t0) / n / 1000


async def main(requests: Path, n: int, repeat: int) -> None:
    import asyncpg

    from riskloop.core.config import get_settings
    from serving.app import _default_feature_store_factory
    from serving.config import ServingSettings
    from serving.online import bind
    from serving.online_sql import SqlReader, build_plan

    settings, cfg = get_settings(), ServingSettings()
    store = _default_feature_store_factory(settings)()
    binding, _ = bind(store, cfg.feature_service)
    plan = build_plan(store, binding.service)
    bodies = [json.loads(line) for _, line in zip(range(n), requests.open(), strict=False)]
    entities = [{"customer_id": b["customer_id"], "terminal_id": b["terminal_id"], "card_token": b["card_token"]} for b in bodies]
    params = [plan.params(plan.keys(e)) for e in entities]
    conn = await asyncpg.connect(**plan.connect)
    pool = await asyncpg.create_pool(**plan.connect, min_size=1, max_size=cfg.online_pool_size)
    reader = SqlReader(plan, timeout_s=1.0, max_size=cfg.online_pool_size)
    await reader.connect()
    rows = [await conn.fetch(plan.sql, *p) for p in params]

    async def nothing() -> None:
        return None

    cases: dict[str, Callable[[int], Awaitable[Any]]] = {
        "query on one asyncpg connection": lambda i: conn.fetch(plan.sql, *params[i]),
        "query through asyncpg.Pool": lambda i: pool.fetch(plan.sql, *params[i]),
        "SqlReader.read (as served)": lambda i: reader.read(entities[i]),
        "entity keys encoded (plan.keys, plan.params)": lambda i: (plan.params(plan.keys(entities[i])), nothing())[1],
        "rows decoded (plan.decode, plan.assemble)": lambda i: (plan.assemble(plan.decode(rows[i])), nothing())[1],
    }
    for _ in range(repeat):
        for label, fn in cases.items():
            us = await _per_call(n, fn)
            print(json.dumps({"case": label, "cpu_us_per_read": round(us, 1), "rows_per_read": len(rows[0]),
                              "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)  # noqa: T201
    await reader.close()
    await pool.close()
    await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.requests, args.n, args.repeat))  # serving's loop
