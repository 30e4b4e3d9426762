"""``serving.decision_log``: the append-only record of every decision, as every reader and writer
sees it (its columns, its DDL, a row by id). Serving writes it (``serving.decision_log``);
monitoring, tripwires, the canary, replays and audits read it."""

from __future__ import annotations

from typing import Any

import psycopg

from riskloop.core.db import append_only_ddl

SCHEMA = "serving"
TABLE = f"{SCHEMA}.decision_log"
DEVICES_TABLE = f"{SCHEMA}.known_devices"
COLUMNS = ("decision_id", "request_id", "decided_at", "model_name", "model_version", "model_alias", "score",
           "decision", "reasons", "rules", "features", "feature_timestamps", "request", "latency_ms", "degraded",
           "product", "policy_version", "signals", "serving_mode", "shadow")
JSON_COLUMNS = frozenset({"reasons", "rules", "features", "feature_timestamps", "request", "signals", "shadow"})
# Columns a row may leave out (null): added after the other producers (credit) wrote rows without them.
OPTIONAL_COLUMNS = frozenset({"serving_mode", "shadow"})

FRAUD_DECISIONS = ("allow", "step_up", "review", "deny")  # in increasing severity
CREDIT_DECISIONS = ("approve", "refer", "decline")
DECISIONS_BY_PRODUCT = {"fraud": FRAUD_DECISIONS, "credit": CREDIT_DECISIONS}

# Serialises concurrent DDL from several workers/replicas starting at once.
_DDL_LOCK_KEY = 0x7269736B6C6F6F70 & 0x7FFFFFFFFFFFFFFF  # "riskloop"

DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {TABLE} (
    decision_id        uuid primary key,
    request_id         text not null,
    decided_at         timestamptz not null,
    model_name         text,
    model_version      text,
    model_alias        text,
    score              double precision,
    decision           text not null,
    reasons            jsonb not null default '[]'::jsonb,
    rules              jsonb not null default '[]'::jsonb,
    features           jsonb not null default '{{}}'::jsonb,
    feature_timestamps jsonb not null default '{{}}'::jsonb,
    request            jsonb not null,
    latency_ms         double precision,
    degraded           boolean not null default false
);
create index if not exists decision_log_decided_at_idx on {TABLE} (decided_at);
-- Columns added since the first version: credit decisions, step_up, the policy version and the stateful rule inputs
-- ("signals") a replay needs. Added idempotently so that an existing log is migrated in place;
-- constant defaults make these metadata-only changes (no table rewrite, no UPDATE trigger).
alter table {TABLE} add column if not exists product text not null default 'fraud';
alter table {TABLE} add column if not exists policy_version text;
alter table {TABLE} add column if not exists signals jsonb not null default '{{}}'::jsonb;
-- Which serving mode decided ('champion' alone, 'canary' routing,
-- 'shadow') and, in shadow or a failed canary route, the other model's outcome
-- ({{alias, version, score, latency_ms, error}}). The deciding model is model_alias/model_version.
alter table {TABLE} add column if not exists serving_mode text;
alter table {TABLE} add column if not exists shadow jsonb;
create index if not exists decision_log_model_decided_idx on {TABLE} (model_name, decided_at);
alter table {TABLE} drop constraint if exists decision_log_decision_check;
do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'decision_log_decision_v2_check'
                   and conrelid = '{TABLE}'::regclass) then
        alter table {TABLE} add constraint decision_log_decision_v2_check check (
            (product = 'fraud' and decision in ({", ".join(f"'{d}'" for d in FRAUD_DECISIONS)}))
            or (product = 'credit' and decision in ({", ".join(f"'{d}'" for d in CREDIT_DECISIONS)})));
    end if;
end
$$;
-- No planner statistics on the JSON columns: no query filters on them by a jsonb operator
-- (readers use the key, decided_at and model columns), yet they were most of the cost of every
-- ANALYZE, and an autoanalyze running beside the serving workers slows their answers
-- (bench/decision_log_analyze.py measures it).
-- Only when one is still set: ALTER TABLE waits for a running ANALYZE.
do $$
begin
    if exists (select 1 from pg_attribute where attrelid = '{TABLE}'::regclass and not attisdropped
               and attname in ({", ".join(f"'{c}'" for c in sorted(JSON_COLUMNS))})
               and attstattarget is distinct from 0) then
        alter table {TABLE} {", ".join(f"alter column {c} set statistics 0" for c in sorted(JSON_COLUMNS))};
    end if;
end
$$;
-- The (customer, device) pairs of allowed fraud payments, written by
-- the writer in the same transaction as their log rows: every serving process reads the new ones
-- back (serving.devices), so a device one worker allowed is known to the others too. A cache of
-- the log, not an audit table: first_allowed_at is the server's clock at insert.
create table if not exists {DEVICES_TABLE} (
    customer_id      text not null,
    device_id        text not null,
    first_allowed_at timestamptz not null default clock_timestamp(),
    primary key (customer_id, device_id)
);
create index if not exists known_devices_first_allowed_idx on {DEVICES_TABLE} (first_allowed_at);
""" + append_only_ddl(TABLE)

SELECT = f"select {', '.join(COLUMNS)} from {TABLE} where decision_id = %s"


def ensure_table(conn: psycopg.Connection) -> None:
    """Create schema, table and the append-only triggers; idempotent and safe to race."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_DDL_LOCK_KEY,))
        conn.execute(DDL)


def fetch(conn: psycopg.Connection, decision_id: str) -> dict[str, Any] | None:
    row = conn.execute(SELECT, (decision_id,)).fetchone()
    return None if row is None else dict(zip(COLUMNS, row, strict=True))
