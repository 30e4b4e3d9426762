"""``serving.decision_log``: the append-only record of every decision, as every reader and writer
sees it (its columns, a row by id; the table itself is :mod:`riskloop.core.migrations`'). Serving
writes it (``serving.decision_log``); monitoring, tripwires, the canary, replays and audits read it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from riskloop.core.subject_keys import reveal

if TYPE_CHECKING:
    from riskloop.core.config import Settings

SCHEMA = "serving"
TABLE = f"{SCHEMA}.decision_log"
DEVICES_TABLE = f"{SCHEMA}.known_devices"
CARD_LOCATIONS_TABLE = f"{SCHEMA}.card_locations"
# Rows the writer could not store (the row JSON-encoded as ASCII text, with the error), set aside so
# that one bad row never holds the others back.
DEAD_LETTERS_TABLE = f"{SCHEMA}.decision_log_dead_letters"
COLUMNS = ("decision_id", "request_id", "decided_at", "model_name", "model_version", "model_alias", "score",
           "decision", "reasons", "rules", "features", "feature_timestamps", "request", "latency_ms", "degraded",
           "product", "policy_version", "signals", "serving_mode", "shadow")
JSON_COLUMNS = frozenset({"reasons", "rules", "features", "feature_timestamps", "request", "signals", "shadow"})
# Columns a row may leave out (null): added after the other producers (credit) wrote rows without them.
OPTIONAL_COLUMNS = frozenset({"serving_mode", "shadow"})

FRAUD_DECISIONS = ("allow", "step_up", "review", "deny")  # in increasing severity
CREDIT_DECISIONS = ("approve", "refer", "decline")
DECISIONS_BY_PRODUCT = {"fraud": FRAUD_DECISIONS, "credit": CREDIT_DECISIONS}

SELECT = f"select {', '.join(COLUMNS)} from {TABLE} where decision_id = %s"


def fetch(conn: psycopg.Connection, decision_id: str, settings: "Settings | None" = None) -> dict[str, Any] | None:
    """A logged decision with its request's personal fields revealed (or marked erased:
    riskloop.core.subject_keys)."""
    row = conn.execute(SELECT, (decision_id,)).fetchone()
    if row is None:
        return None
    out = dict(zip(COLUMNS, row, strict=True))
    out["request"] = reveal(conn, [out["request"]], settings)[0]
    return out
