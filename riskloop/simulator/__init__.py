"""The riskloop simulator: card payments with known fraud, and the raw feeds a fintech would land.

Two layers:

- `riskloop.simulator.handbook` reimplements, vectorised, the transaction generator of the
  Fraud Detection Handbook (its customers, terminals and three fraud scenarios), producing the
  ground truth in the handbook's column schema;
- `riskloop.simulator.derive` turns any handbook-schema frame (a simulation or the real
  handbook file) into the raw tables of `riskloop.core.schema`, holding only what had happened
  before ``as_of``.

Public API::

    sim = simulate(days=30, customers=5000, seed=42)       # or simulate(preset="handbook")
    sim = simulate(days=35, customers=500, drift="amount-shift", drift_from="2018-04-29")  # see .drift
    manifest = write(sim, "landing/2018-05-01")             # <table>.parquet + manifest.json
    tables = derive_from_handbook(pd.read_parquet(path), seed=0)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from riskloop.core.schema import RAW_TABLES
from riskloop.simulator.batch import write_batch_files
from riskloop.simulator.derive import derive_tables, infer_period
from riskloop.simulator.drift import DEFAULT_AMOUNT_FACTOR, DRIFTS, apply_drift, validate
from riskloop.simulator.frames import to_arrow
from riskloop.simulator.handbook import DEFAULT_RADIUS, DEFAULT_START_DATE, generate
from riskloop.simulator.score_requests import write_score_requests
from riskloop.simulator.webhooks import write_webhook_files

__all__ = ["DRIFTS", "PRESETS", "Simulation", "SimulationParams", "derive_from_handbook", "infer_period", "manifest",
           "resolve_params", "simulate", "write"]

logger = logging.getLogger(__name__)

TRANSACTIONS_FILE = "transactions.parquet"
MANIFEST_FILE = "manifest.json"
GENERATOR = "riskloop.simulator/handbook-v1"

# Named parameter sets.  "handbook" reproduces the shape of the public handbook dataset.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "handbook": MappingProxyType({"days": 183, "customers": 5000, "terminals": 10_000, "start_date": "2018-04-01"}),
})


@dataclass(frozen=True)
class SimulationParams:
    """Everything that determines a simulation's output (recorded in the manifest)."""

    days: int
    customers: int
    terminals: int
    seed: int
    start_date: str = DEFAULT_START_DATE
    r: float = DEFAULT_RADIUS
    applications_per_customer: float = 1.0
    preset: str | None = None
    # Injected drift (riskloop.simulator.drift): kind, first drifted day (YYYY-MM-DD), amount factor.
    drift: str | None = None
    drift_from: str | None = None
    drift_factor: float = DEFAULT_AMOUNT_FACTOR


@dataclass(frozen=True)
class Simulation:
    """A simulation's ground truth (``transactions``, handbook schema) and landed raw ``tables``.

    ``as_of`` (tz-aware UTC) is the end of the simulated period, exclusive: the raw tables hold
    what had reached riskloop before it (every time column < as_of), the transactions hold the
    full truth, including fraud labels whose dispute had not closed yet.
    """

    params: SimulationParams
    as_of: pd.Timestamp
    transactions: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(repr=False)


def resolve_params(days: int | None = None, customers: int | None = None, seed: int = 0,
                   terminals: int | None = None, start_date: str | None = None, preset: str | None = None,
                   r: float = DEFAULT_RADIUS, applications_per_customer: float = 1.0, drift: str | None = None,
                   drift_from: str | None = None, drift_factor: float = DEFAULT_AMOUNT_FACTOR) -> SimulationParams:
    """The parameters `simulate` will use (see its docstring for the preset rule); bad drift
    options fail here, before anything is generated."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        fixed = PRESETS[preset]
        days, customers, terminals, start_date = (fixed["days"], fixed["customers"], fixed["terminals"],
                                                  fixed["start_date"])
    if days is None or customers is None:
        raise ValueError("days and customers are required unless a preset is given")
    start = str(pd.Timestamp(start_date or DEFAULT_START_DATE).date())
    first = validate(drift, drift_from, start, int(days), float(drift_factor))
    return SimulationParams(
        days=int(days), customers=int(customers),
        terminals=int(terminals) if terminals is not None else 2 * int(customers),
        seed=int(seed), start_date=start, r=float(r),
        applications_per_customer=float(applications_per_customer), preset=preset,
        drift=drift, drift_from=str(first.date()) if first is not None else None, drift_factor=float(drift_factor),
    )


def simulate(days: int | None = None, customers: int | None = None, seed: int = 0, terminals: int | None = None,
             start_date: str | None = None, preset: str | None = None, r: float = DEFAULT_RADIUS,
             applications_per_customer: float = 1.0, drift: str | None = None, drift_from: str | None = None,
             drift_factor: float = DEFAULT_AMOUNT_FACTOR) -> Simulation:
    """Simulate ``days`` days of ``customers`` customers' card payments and derive the raw tables.

    ``terminals`` defaults to 2 per customer and ``start_date`` to 2018-04-01 (the handbook's).
    A ``preset`` (see `PRESETS`, e.g. ``"handbook"``: 5,000 customers, 10,000 terminals, 183
    days from 2018-04-01) fixes days, customers, terminals and start_date, and the values
    passed for those are ignored: a CLI passes its defaults for them, and a preset must mean
    the same data whatever those defaults are.  ``r`` is the customer-terminal radius and
    ``applications_per_customer`` the mean number of credit applications per customer.
    ``drift`` (``"amount-shift"`` or ``"new-fraud-pattern"``) changes the world from the day
    ``drift_from`` on (see :mod:`riskloop.simulator.drift`; ``drift_factor`` scales the amounts
    of an amount shift); the transactions before it are exactly those of the same call without drift.
    Same arguments, same output.
    """
    params = resolve_params(days, customers, seed, terminals, start_date, preset, r, applications_per_customer,
                            drift, drift_from, drift_factor)
    logger.info("simulating %s", params)
    data = generate(params.days, params.customers, params.terminals, params.seed, params.start_date, params.r)
    transactions = data.transactions
    if params.drift is not None:
        first_day = (pd.Timestamp(params.drift_from) - pd.Timestamp(params.start_date)).days
        # A stream of its own, so the undrifted part and the other feeds do not move with the drift.
        drift_rng = np.random.default_rng([params.seed, 0xD21F7])
        transactions = apply_drift(transactions, params.drift, first_day, drift_rng,
                                   pd.Timestamp(params.start_date), params.customers, params.terminals,
                                   params.drift_factor)
    start = pd.Timestamp(params.start_date, tz="UTC")
    as_of = start + pd.Timedelta(days=params.days)
    tables = derive_tables(transactions, seed=params.seed, as_of=as_of, start=start,
                           applications_per_customer=params.applications_per_customer,
                           customer_ids=data.customers["CUSTOMER_ID"].to_numpy())
    return Simulation(params=params, as_of=as_of, transactions=transactions, tables=tables)


def derive_from_handbook(df: pd.DataFrame, seed: int = 0, applications_per_customer: float = 1.0
                         ) -> dict[str, pd.DataFrame]:
    """The raw tables derived from a handbook-schema frame, e.g. the real handbook file.

    The period is inferred from the frame (start = TX_DATETIME - TX_TIME_SECONDS, as_of =
    midnight after the last TX_TIME_DAYS); see `riskloop.simulator.derive.derive_tables` to
    set it explicitly.
    """
    return derive_tables(df, seed=seed, applications_per_customer=applications_per_customer)


def _write_parquet(table: pa.Table, path: Path) -> None:
    # Write then rename, so a reader polling the directory never sees a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def manifest(sim: Simulation) -> dict[str, Any]:
    """What `write` records next to the files: parameters, period, row counts, fraud rates."""
    tx = sim.transactions
    n = len(tx)
    counts = tx["TX_FRAUD_SCENARIO"].value_counts()
    # the handbook's 0-3 always; 4 (card testing) only when that drift was injected
    scenarios = counts.reindex(sorted({0, 1, 2, 3, *map(int, counts.index)}), fill_value=0)
    return {
        "dataset": "simulated",  # riskloop.data.dataset_claim: one dataset per warehouse
        "generator": GENERATOR,
        "seed": sim.params.seed,
        "parameters": asdict(sim.params),
        "start": pd.Timestamp(sim.params.start_date, tz="UTC").isoformat(),
        "as_of": sim.as_of.isoformat(),
        "row_counts": {"transactions": n, **{name: len(t) for name, t in sim.tables.items()}},
        "fraud_rate": float(tx["TX_FRAUD"].mean()) if n else 0.0,
        "fraud_scenario_counts": {str(k): int(v) for k, v in scenarios.items()},
        "files": {"transactions": TRANSACTIONS_FILE, **{t.name: t.file_name for t in RAW_TABLES}},
    }


def write(sim: Simulation, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``<table>.parquet`` per raw table, ``transactions.parquet``, ``webhooks/{stripe,standard}.jsonl``,
    ``score_requests.jsonl``, the processors' batch files (``batch/<kind>/<processor>/<day>.csv``)
    and ``manifest.json``.

    The manifest is written last, so its presence marks a complete landing.  Returns it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for table in RAW_TABLES:
        _write_parquet(to_arrow(table.name, sim.tables[table.name]), out / table.file_name)
    _write_parquet(pa.Table.from_pandas(sim.transactions, preserve_index=False), out / TRANSACTIONS_FILE)
    # The same events as each processor's signed-webhook bodies (webhooks/<processor>.jsonl), so an
    # archive can be replayed against the receiver (`riskloop replay webhooks`).
    write_webhook_files(sim.tables["webhook_events"], out)
    # One POST /v1/score/fraud body per authorisation, to drive the scoring API (bench/serving_load.py).
    write_score_requests(sim.tables["webhook_events"], out)
    # Settlement and dispute files as processors deliver them to object storage (riskloop.data.batch_files).
    write_batch_files(sim.tables, out)
    info = manifest(sim)
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST_FILE)
    logger.info("wrote simulation (seed %d, %d transactions) to %s", sim.params.seed, len(sim.transactions), out)
    return info
