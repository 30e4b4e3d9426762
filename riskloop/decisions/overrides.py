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

from riskloop.decisions.log import SCHEMA

TABLE = f"{SCHEMA}.decision_overrides"
COLUMNS = ("override_id", "decision_id", "overridden_at", "previous_decision", "decision", "reason", "actor",
           "request_id")

INSERT = (f"insert into {TABLE} ({', '.join(COLUMNS)}) values ({', '.join(['%s'] * len(COLUMNS))}) "
          f"returning {', '.join(COLUMNS)}")
SELECT = f"select {', '.join(COLUMNS)} from {TABLE} where decision_id = %s order by overridden_at, override_id"


def insert(conn: psycopg.Connection, row: dict[str, Any]) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(INSERT, tuple(row[c] for c in COLUMNS))
        out = cur.fetchone()
    assert out is not None
    return out


def for_decision(conn: psycopg.Connection, decision_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(SELECT, (decision_id,)).fetchall())
