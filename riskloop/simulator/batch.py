"""The processors' daily batch files, derived from the simulated raw tables.

Settlement file: per processor and day, every payment captured the day before, settled with the
processor's fee (1.4 % + 25 minor units) in one payout. Dispute report: per processor and day,
every dispute that opened or closed that day, in its state at that moment. Files are the CSV a
processor would drop into the bucket (header = ``riskloop.data.batch_files.file_columns``), keyed
``<kind>/<processor>/<YYYY-MM-DD>.csv`` as they go under ``incoming/``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from riskloop.core.schema import BATCH_FILE_TABLES, BATCH_LINEAGE_COLUMNS

logger = logging.getLogger(__name__)

BATCH_DIR = "batch"


def _columns(kind: str) -> list[str]:
    return [c for c in BATCH_FILE_TABLES[kind].column_names if c not in BATCH_LINEAGE_COLUMNS]


def _settlements(events: pd.DataFrame) -> pd.DataFrame:
    captured = events[events["event_type"] == "payment.captured"]
    day = captured["occurred_at"].dt.floor("D") + pd.Timedelta(days=1)
    out = pd.DataFrame({
        "processor": captured["processor"],
        "payout_id": "po_" + captured["processor"] + "_" + day.dt.strftime("%Y%m%d"),
        "payment_id": captured["payment_id"],
        "amount_minor": captured["amount_minor"].astype("int64"),
        "fee_minor": (captured["amount_minor"] * 0.014).round().astype("int64") + 25,
        "currency": captured["currency"],
        "settled_at": day + pd.Timedelta(hours=6),
    })
    return out[_columns("settlements")]


def _disputes(disputes: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    processor = events.drop_duplicates("payment_id").set_index("payment_id")["processor"]
    base = disputes.assign(processor=disputes["payment_id"].map(processor).fillna("stripe"))
    opened = base.assign(status="opened", fraud_confirmed=pd.NA, updated_at=base["opened_at"])
    closed = base.assign(updated_at=base["closed_at"])
    both = pd.concat([opened, closed], ignore_index=True)
    both["fraud_confirmed"] = both["fraud_confirmed"].astype("boolean")
    return both.sort_values(["updated_at", "dispute_id"])[_columns("disputes")]


def batch_files(tables: dict[str, pd.DataFrame]) -> dict[str, bytes]:
    """``{"<kind>/<processor>/<day>.csv": CSV bytes}`` for every processor-day with lines."""
    events = tables["webhook_events"]
    frames = {"settlements": (_settlements(events), "settled_at"),
              "disputes": (_disputes(tables["dispute_outcomes"], events), "updated_at")}
    files: dict[str, bytes] = {}
    for kind, (frame, time_col) in frames.items():
        day = frame[time_col].dt.strftime("%Y-%m-%d")
        for (processor, d), part in frame.groupby([frame["processor"], day], sort=True):
            text = part.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ", lineterminator="\n")
            files[f"{kind}/{processor}/{d}.csv"] = text.encode()
    return files


def write_batch_files(tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> int:
    """Write :func:`batch_files` under ``<out_dir>/batch/``; returns how many files."""
    root = Path(out_dir) / BATCH_DIR
    files = batch_files(tables)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    logger.info("wrote %d processor batch files under %s", len(files), root)
    return len(files)
