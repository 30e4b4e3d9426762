"""Quarantine: the rows of a raw table that broke its contract, moved out of the way.

When a GX checkpoint over ``raw.*`` fails (``riskloop.data.contracts``), every row-level failure is
turned into the natural keys of the rows that broke it:

- column expectations (not null, in set, between, regex, pair comparisons...): GX's own
  ``unexpected_index_query`` for the table's key columns (re-validated with result format
  ``COMPLETE`` only on failure, so passing runs pay nothing), else its ``unexpected_index_list``;
- ``unexpected_rows_expectation`` (e.g. a ledger journal that does not balance): the suite's own
  query, joined back to the table on the columns it returns (all lines of that journal).

In one transaction those rows are **moved** from ``raw.<table>`` to ``quarantine.<table>``: the
contract's columns and lineage (``_batch_id``: which load brought them, ``_loaded_at``: when it
arrived) plus ``_expectations`` (every expectation the row broke), ``_contract_run_id`` and
``_quarantined_at``. Rows that passed stay in ``raw`` untouched, and the landed files are never
modified, so fixing the feed and re-running the load brings corrected rows back through the
contract. Table-level failures (an empty feed, a stale one) have no rows to move: they are
reported, and the task still fails.

Re-quarantining the same key (the same bad file loaded twice) updates its row: counts stay exact.

Rows a load cannot write at all (text Postgres cannot store, ``riskloop.core.storable``) never reach
``raw``: the loader sets them aside here directly (:func:`set_aside`), their text escaped, with the
reason as their expectation, and loads the rest of the file.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from riskloop.core import db
from riskloop.core.schema import CONTRACT_TABLES_BY_NAME, RAW_SCHEMA, RawTable
from riskloop.core.storable import escape_unstorable

log = logging.getLogger(__name__)

QUARANTINE_SCHEMA = "quarantine"
EXTRA_COLUMNS = ("_expectations", "_contract_run_id", "_quarantined_at")


@dataclass(frozen=True)
class Selection:
    """How to find the rows one failed expectation refers to: a query returning key columns
    (``kind="keys"``), a query to join back on shared columns (``"join"``), or literal keys."""

    expectation: str
    kind: str  # "keys" | "join" | "list"
    query: str | None = None
    keys: tuple[tuple[Any, ...], ...] = ()


def ensure_table(conn: psycopg.Connection, table: RawTable) -> None:
    """``quarantine.<table>``: the raw table's columns and lineage, and why/when it was quarantined."""
    db.ensure_schema(conn, QUARANTINE_SCHEMA)
    conn.execute(sql.SQL(
        """
        create table if not exists {q} (
          like {raw},
          _expectations text[] not null,
          _contract_run_id uuid not null,
          _quarantined_at timestamptz not null default now(),
          primary key ({key})
        )
        """).format(q=sql.Identifier(QUARANTINE_SCHEMA, table.name), raw=sql.Identifier(RAW_SCHEMA, table.name),
                    key=sql.SQL(", ").join(map(sql.Identifier, table.key))))


def _strip(query: str) -> str:
    return query.strip().rstrip(";")


def _collect(conn: psycopg.Connection, table: RawTable, selections: list[Selection]) -> str:
    """Fill a temp table ``(key..., expectation)`` with every (row, broken expectation) pair."""
    tmp = f"_quarantine_{table.name}"
    key = sql.SQL(", ").join(map(sql.Identifier, table.key))
    raw = sql.Identifier(RAW_SCHEMA, table.name)
    conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(tmp)))
    conn.execute(sql.SQL("create temp table {} on commit drop as select {}, ''::text as expectation from {} limit 0")
                 .format(sql.Identifier(tmp), key, raw))
    for sel in selections:
        if sel.kind == "keys" and sel.query:
            conn.execute(sql.SQL("insert into {} select {}, %s from ({}) q").format(
                sql.Identifier(tmp), sql.SQL(", ").join(sql.SQL("q.{}").format(sql.Identifier(k)) for k in table.key),
                sql.SQL(_strip(sel.query))), (sel.expectation,))  # type: ignore[arg-type]
        elif sel.kind == "join" and sel.query:
            cur = conn.execute(sql.SQL("select * from ({}) q limit 0").format(sql.SQL(_strip(sel.query))))  # type: ignore[arg-type]
            shared = [d.name for d in cur.description or () if d.name in table.column_names]
            if not shared:
                log.warning("%s: %s returns no column of the table; its rows cannot be located", table.name,
                            sel.expectation)
                continue
            on = sql.SQL(" and ").join(sql.SQL("r.{0} is not distinct from q.{0}").format(sql.Identifier(c))
                                       for c in shared)
            conn.execute(sql.SQL("insert into {} select {}, %s from {} r join ({}) q on {}").format(
                sql.Identifier(tmp), sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(k)) for k in table.key),
                raw, sql.SQL(_strip(sel.query)), on), (sel.expectation,))  # type: ignore[arg-type]
        elif sel.kind == "list" and sel.keys:
            with conn.cursor() as cur:
                cur.executemany(sql.SQL("insert into {} values ({}, %s)").format(
                    sql.Identifier(tmp), sql.SQL(", ").join(sql.Placeholder() * len(table.key))),
                    [(*k, sel.expectation) for k in sel.keys])
    return tmp


def move(conn: psycopg.Connection, table_name: str, selections: list[Selection], run_id: str) -> int:
    """Move the selected rows of ``raw.<table>`` to ``quarantine.<table>`` (in the caller's
    transaction); returns how many rows moved."""
    table = CONTRACT_TABLES_BY_NAME[table_name]
    ensure_table(conn, table)
    conn.execute(sql.SQL("set local search_path to {}").format(sql.Identifier(RAW_SCHEMA)))  # GX's queries
    tmp = _collect(conn, table, selections)
    cols = [*table.column_names, "_batch_id", "_loaded_at"]
    col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
    key = sql.SQL(", ").join(map(sql.Identifier, table.key))
    match = sql.SQL(" and ").join(sql.SQL("r.{0} = q.{0}").format(sql.Identifier(k)) for k in table.key)
    updates = sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                                 for c in [*cols, *EXTRA_COLUMNS] if c not in table.key)
    moved = conn.execute(sql.SQL(
        """
        with q as (
          select {key}, array_agg(distinct expectation order by expectation) as e from {tmp} group by {key}
        ), gone as (
          delete from {raw} r using q where {match} returning {r_cols}, q.e
        ), kept as (
          insert into {quar} ({col_list}, _expectations, _contract_run_id, _quarantined_at)
          select {col_list}, e, %s, now() from gone
          on conflict ({key}) do update set {updates}
          returning 1
        )
        select count(*) from kept
        """).format(key=key, tmp=sql.Identifier(tmp), raw=sql.Identifier(RAW_SCHEMA, table.name), match=match,
                    r_cols=sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in cols),
                    quar=sql.Identifier(QUARANTINE_SCHEMA, table.name), col_list=col_list, updates=updates),
        (run_id,)).fetchone()[0]
    conn.execute("set local search_path to default")
    log.warning("quarantined %d rows of %s.%s (contract run %s)", moved, RAW_SCHEMA, table.name, run_id)
    return int(moved)


def set_aside(conn: psycopg.Connection, table: RawTable, rows: list[dict[str, Any]], reasons: list[str],
              batch_id: int) -> int:
    """Put ``rows`` (the raw table's columns) straight into ``quarantine.<table>`` with their
    ``reasons`` as expectations, in the caller's transaction: rows a load refused before ``raw``.
    Their text is stored with what Postgres cannot hold escaped (``\\u0000``), so the row can be
    read, fixed and re-sent. One fresh run id per call stands for the load's check. Returns the count."""
    if not rows:
        return 0
    ensure_table(conn, table)
    cols = [*table.column_names, "_batch_id", "_loaded_at", *EXTRA_COLUMNS]
    updates = sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                                 for c in cols if c not in table.key)
    query = sql.SQL("insert into {} ({}) values ({}, now(), %s, %s, now()) on conflict ({}) do update set {}").format(
        sql.Identifier(QUARANTINE_SCHEMA, table.name), sql.SQL(", ").join(map(sql.Identifier, cols)),
        sql.SQL(", ").join(sql.Placeholder() * (len(table.column_names) + 1)),
        sql.SQL(", ").join(map(sql.Identifier, table.key)), updates)
    run_id = str(uuid.uuid4())
    by_key: dict[tuple, tuple] = {}  # one row per key (the last), as a load keeps the last duplicate
    for row, reason in zip(rows, reasons, strict=True):
        values = [escape_unstorable(v) if isinstance(v, str) else v for v in (row[c] for c in table.column_names)]
        by_key[tuple(row[k] for k in table.key)] = (*values, batch_id, [reason], run_id)
    with conn.cursor() as cur:
        cur.executemany(query, list(by_key.values()))
    log.warning("quarantined %d rows of %s.%s before loading (load batch %d, run %s), e.g. %s", len(by_key),
                RAW_SCHEMA, table.name, batch_id, run_id, reasons[0])
    return len(by_key)


def batch_placeholder(query: str, table: str) -> str:
    """A suite's ``unexpected_rows_query`` with GX's ``{batch}`` replaced by ``raw.<table>``."""
    return re.sub(r"\{batch\}", f'"{RAW_SCHEMA}"."{table}"', query)
