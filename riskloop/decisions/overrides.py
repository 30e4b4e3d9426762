"""``serving.decision_overrides``: a reviewer's change of a decision, in its own append-only table.

The decision log is the record of what the *system* decided and why; it is never touched. An
override is a second fact — who (an API-key fingerprint with its role), when, to what, and why —
so an auditor sees both, and the effective outcome of a decision is its latest override, if any.
Like the log, the table refuses UPDATE, DELETE and TRUNCATE in the database itself.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from riskloop.core.db import append_only_ddl
from riskloop.decisions.log import _DDL_LOCK_KEY, SCHEMA
from riskloop.decisions.log import TABLE as LOG_TABLE

TABLE = f"{SCHEMA}.decision_overrides"
COLUMNS = ("override_id", "decision_id", "overridden_at", "previous_decision", "decision", "reason", "actor",
           "request_id")

DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {TABLE} (
    override_id       uuid primary key,
    decision_id       uuid not null references {LOG_TABLE} (decision_id),
    overridden_at     timestamptz not null default now(),
    previous_decision text not null,
    decision          text not null,
    reason            text not null check (length(btrim(reason)) > 0),
    actor             text not null,
    request_id        text
);
create index if not exists decision_overrides_decision_idx on {TABLE} (decision_id, overridden_at);
""" + append_only_ddl(TABLE)

INSERT = (f"insert into {TABLE} ({', '.join(COLUMNS)}) values ({', '.join(['%s'] * len(COLUMNS))}) "
          f"returning {', '.join(COLUMNS)}")
SELECT = f"select {', '.join(COLUMNS)} from {TABLE} where decision_id = %s order by overridden_at, override_id"


def ensure_table(conn: psycopg.Connection) -> None:
    """Create the table (after the decision log it references); idempotent and safe to race."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_DDL_LOCK_KEY,))
        conn.execute(DDL)


def insert(conn: psycopg.Connection, row: dict[str, Any]) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(INSERT, tuple(row[c] for c in COLUMNS))
        out = cur.fetchone()
    assert out is not None
    return out


def for_decision(conn: psycopg.Connection, decision_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(SELECT, (decision_id,)).fetchall())
