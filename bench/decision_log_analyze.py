"""What an ANALYZE of the decision log costs, with and without statistics on its JSON columns.

Autoanalyze of ``serving.decision_log`` stalled the serving workers on 2 shared cores (BENCHMARKS.md,
"The online cache, and the machine's own speed"), so serving.decision_log sets statistics 0 on the
JSON columns, which no query filters on. This measures the saving: a scratch copy of the table
(``bench_analyze.decision_log``, dropped at the end) with ``-n`` rows shaped like real fraud
decisions (bench/decision_log_write.py's), ANALYZEd ``--repeat`` times each way. Against
``riskloop up``'s Postgres (or RISKLOOP_DATABASE_URL):

    .venv/bin/python bench/decision_log_analyze.py -n 50000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import psycopg
from decision_log_write import row

from riskloop.core.config import get_settings
from riskloop.core.db import dsn
from riskloop.decisions import log as decision_log
from serving.decision_log import _params

SCRATCH = "bench_analyze.decision_log"


def timed_analyze(conn: psycopg.Connection, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        conn.execute(f"analyze {SCRATCH}")
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with psycopg.connect(dsn(get_settings()), autocommit=True) as conn:
        conn.execute("create schema if not exists bench_analyze")
        conn.execute(f"drop table if exists {SCRATCH}")
        conn.execute(f"create table {SCRATCH} (like {decision_log.TABLE} including defaults)")
        try:
            with conn.cursor() as cur, cur.copy(f"copy {SCRATCH} ({', '.join(decision_log.COLUMNS)}) from stdin") as cp:
                for i in range(args.n):
                    cp.write_row(_params(row(i)))
            json_cols = sorted(decision_log.JSON_COLUMNS)
            result = {"rows": args.n, "repeat": args.repeat, "loadavg_1m": round(os.getloadavg()[0], 2)}
            for label, target in (("default_statistics", -1), ("json_statistics_0", 0)):
                conn.execute(f"alter table {SCRATCH} " +
                             ", ".join(f"alter column {c} set statistics {target}" for c in json_cols))
                times = timed_analyze(conn, args.repeat)
                result[label] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                                 "max_s": round(max(times), 3)}
            print(json.dumps(result))  # noqa: T201 - a benchmark's report
        finally:
            conn.execute("drop schema bench_analyze cascade")


if __name__ == "__main__":
    main()
