"""One warehouse, one dataset: a landing of another dataset is refused before it writes.

Raw tables are keyed by the ids a feed carries (``customer_id``, ``application_id``, ...). Two
datasets generated apart (the simulated demo world and the handbook's file) reuse the same ids for
different people, so loading the second into the first's warehouse would upsert its rows over the
first's: the demo's credit outcomes end up belonging to the handbook's applications, and the next
demo run fails its contracts. A landing names its dataset in ``manifest.json`` (``dataset``), the
first load records it in ``raw.dataset``, and a load naming another one raises
:class:`DatasetCollision` inside the load's transaction, before any row is written. A second
dataset goes into its own namespace (``RISKLOOP_NAMESPACE``: its own warehouse and Feast databases
on the same server), which ``riskloop benchmark handbook`` chooses by itself.

A landing without a manifest (files put there by hand or by a processor) names no dataset and is
loaded into whatever the warehouse holds, as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
TABLE = "raw.dataset"
# Warehouses loaded before datasets were named: the handbook import was the only loader whose landing
# is not the simulator's, and it lands under <landing>/handbook/.
_HANDBOOK_SOURCE = "%/handbook/%"


class DatasetCollision(RuntimeError):
    """The landing belongs to another dataset than the one the warehouse holds."""


def landing_dataset(directory: Path) -> str | None:
    """The dataset a landing belongs to, from its manifest (``dataset``; the simulator's older
    manifests, which name a ``generator`` only, are ``simulated``), or None without a manifest."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    return manifest.get("dataset") or ("simulated" if "generator" in manifest else None)


def create_table(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        create table if not exists raw.dataset (
          only_row boolean primary key default true check (only_row),
          name text not null,
          first_landing text not null,
          claimed_at timestamptz not null default now()
        )
        """
    )


def held(conn: psycopg.Connection) -> str | None:
    """The dataset the warehouse holds: its claim, or for a warehouse loaded before claims, what its
    load batches say; None for an empty warehouse."""
    row = conn.execute("select name from raw.dataset").fetchone()
    if row is not None:
        return row[0]
    legacy = conn.execute(
        "select bool_or(source_file like %s), count(*) > 0 from raw.load_batches", (_HANDBOOK_SOURCE,)).fetchone()
    if not legacy[1]:
        return None
    return "handbook" if legacy[0] else "simulated"


def claim(conn: psycopg.Connection, name: str, landing: Path, warehouse: str) -> None:
    """Record ``name`` as the warehouse's dataset, or raise :class:`DatasetCollision` if it holds
    another. Runs in the caller's load transaction (the row lock serialises concurrent loaders), so
    a refused load writes nothing."""
    create_table(conn)
    conn.execute("lock table raw.dataset in share row exclusive mode")
    current = held(conn)
    if current is not None and current != name:
        log.error("refused landing %s: dataset %r into warehouse %s, which holds dataset %r",
                  landing, name, warehouse, current)
        raise DatasetCollision(
            f"warehouse {warehouse!r} holds dataset {current!r}; the landing {landing} is dataset {name!r}, "
            f"whose ids would overwrite its rows. Load it into a namespace of its own: "
            f"RISKLOOP_NAMESPACE={name} (its own warehouse and Feast databases on the same server; "
            f"`riskloop benchmark handbook` does this by itself), or use an empty warehouse.")
    conn.execute(
        "insert into raw.dataset (name, first_landing) values (%s, %s) on conflict (only_row) do nothing",
        (name, str(landing)))
