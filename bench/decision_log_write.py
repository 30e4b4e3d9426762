"""CPU cost of the decision-log writer per row, in process: batches of ``--batch`` rows, ``-n`` rows.

The open-loop HTTP benchmark cannot separate the writer from everything else on a busy shared
machine; this does, with process CPU time (the writer thread holds the GIL while it encodes and
sends, which is what the request path feels). Rows have the shape of a real fraud decision (24
features with timestamps, 4 reasons, the request). Against ``riskloop up``'s Postgres:

    .venv/bin/python bench/decision_log_write.py -n 20000 --batch 25

``--review-share 0.05`` makes that share of the rows ``review`` decisions (spread over ``--customers``
customers and their cards) and has the writer link them to cases (riskloop.decisions.cases), as
serving does: the cost of the case queue on the writer.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from riskloop.core.config import get_settings
from riskloop.core.db import dsn
from riskloop.decisions.cases import CaseRules
from serving.decision_log import DecisionLogWriter


def row(i: int, decision: str = "allow", customers: int = 1000, run: str = "") -> dict[str, Any]:
    now = datetime.now(UTC)
    features = {f"view__feature_{k}": float(i % 97 + k) for k in range(24)}
    return {
        "decision_id": uuid.uuid4(), "request_id": uuid.uuid4().hex, "decided_at": now,
        "model_name": "riskloop-fraud", "model_version": "1", "model_alias": "champion", "score": 0.0123,
        "decision": decision, "rules": [], "features": features,
        "reasons": [{"code": f"R{k}", "feature": f"view__feature_{k}", "value": float(k), "contribution": 0.1}
                    for k in range(4)],
        "feature_timestamps": {f"view__feature_{k}": now.isoformat() for k in range(24)},
        "request": {"transaction_id": f"tx_{i}", "card_token": f"tok_{run}{i % customers}",
                    "customer_id": f"{run}{i % customers}",
                    "terminal_id": str(i % 500), "amount_minor": 1999, "currency": "EUR",
                    "timestamp": now.isoformat(), "device_id": None, "ip": None, "country": None},
        "latency_ms": 1.5, "degraded": False, "product": "fraud", "policy_version": "fraud-v1",
        "signals": {"device_known": True}, "serving_mode": "champion", "shadow": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--review-share", type=float, default=0.0, help="Share of review decisions (linked to cases).")
    ap.add_argument("--customers", type=int, default=1000, help="Distinct customers (and cards) of the rows.")
    args = ap.parse_args()
    run = uuid.uuid4().hex[:6]  # fresh customers per run: every run opens its own cases
    every = round(1 / args.review_share) if args.review_share else 0
    rows = [row(i, "review" if every and i % every == 0 else "allow", args.customers, run) for i in range(args.n)]
    settings = get_settings()
    writer = DecisionLogWriter(dsn(settings), maxsize=args.n + 1, batch_size=args.batch,
                               enqueue_timeout_s=1.0,
                               case_rules=CaseRules.from_settings(settings) if every else None)
    writer.start()
    while not writer.alive:
        time.sleep(0.01)
    t0, c0 = time.perf_counter(), time.process_time()
    futures = [writer.submit(r) for r in rows]
    writer.close(60)
    assert all(f.result(timeout=0) is None for f in futures)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"rows": args.n, "batch": args.batch, "review_share": args.review_share, "wall_s": round(wall, 2),
                      "rows_per_s": round(args.n / wall),
                      "cpu_us_per_row": round(cpu * 1e6 / args.n, 1), "loadavg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
