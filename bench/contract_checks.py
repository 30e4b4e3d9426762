"""What the contract checks cost per pipeline run: GX over the landed tables alone vs with the
batch-file tables, the three batch marts' suites vs all five (the real-time windows' added), and
one ``dbt build`` of the project (with its node count).

Against the configured stack (``riskloop up`` first; it resets the warehouse's raw/dbt schemas, so
never against data you keep): loads the small hand-made tables of ``tests/fixtures_data.py``,
builds dbt once, then times each check ``--repeat`` times (median) after one warm-up run (the GX
import, ~9 s, is not counted).

    RISKLOOP_PG_PORT=58432 RISKLOOP_MLFLOW_PORT=58000 python bench/contract_checks.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from riskloop.core.config import Settings  # noqa: E402
from riskloop.core.schema import RAW_TABLES  # noqa: E402
from riskloop.data.contracts import run_contracts, run_mart_contracts  # noqa: E402
from riskloop.data.ingest import load_table  # noqa: E402
from riskloop.data.transform import run_dbt  # noqa: E402
from tests.fixtures_data import make_tables, reset_warehouse  # noqa: E402

BATCH_MARTS = ["customer_spending_features", "terminal_risk_features", "credit_features"]


def median_seconds(f: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = Settings()
    reset_warehouse(settings)
    for name, frame in make_tables().items():
        load_table(settings, name, frame)
    t0 = time.perf_counter()
    result = run_dbt(settings, ["build"])
    dbt_s, nodes = time.perf_counter() - t0, len(result.results)
    landed = [t.name for t in RAW_TABLES]
    run_contracts(settings, landed)  # warm-up: the GX import
    figures = {
        "dbt build (s)": dbt_s, "dbt nodes": nodes,
        "GX landed tables (s)": median_seconds(lambda: run_contracts(settings, landed), args.repeat),
        "GX all contract tables (s)": median_seconds(lambda: run_contracts(settings), args.repeat),
        "GX batch marts (s)": median_seconds(lambda: run_mart_contracts(settings, BATCH_MARTS), args.repeat),
        "GX all marts (s)": median_seconds(lambda: run_mart_contracts(settings), args.repeat),
    }
    for k, v in figures.items():
        print(f"{k:28s} {v:.2f}" if isinstance(v, float) else f"{k:28s} {v}")
    print("load average", " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
