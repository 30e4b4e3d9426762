"""The webhook inbox table (``raw.webhook_inbox``): its DDL, and what lets a consumer tail it.

The receiver (``serving.webhooks``) writes it; dbt reads it as the source ``receiver.webhook_inbox``
(so ingestion creates it too, before dbt runs); the real-time stream (``riskloop.features.stream``) tails
it. Two additions beyond the contract columns of ``riskloop.core.schema.WEBHOOK_INBOX`` serve the tail:

- ``_xid``: the inserting transaction's id (``xid8``, never wraps). Rows with ``_xid`` below the
  ``xmin`` of a fresh snapshot come from transactions that have all ended, so no row can still
  appear there; a consumer that remembers "everything below X is processed" never skips an event
  that commits late (an identity column would: ids are taken before commit, in another order).
- a statement-level trigger that ``NOTIFY``s :data:`CHANNEL` on insert, delivered at commit, so the
  consumer wakes at once instead of polling (it still polls, slowly, in case a notice is missed).

The DDL runs only for what is missing: ``alter table`` and ``create trigger`` take locks that
would stall the receiver's inserts if every loader re-ran them.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from riskloop.core.schema import RAW_SCHEMA, WEBHOOK_INBOX

INBOX = f"{RAW_SCHEMA}.{WEBHOOK_INBOX.name}"
CHANNEL = "riskloop_webhook_inbox"
XID_COLUMN = "_xid"
_TRIGGER = "webhook_inbox_notify"
_NOTIFY_FN = "notify_webhook_inbox"


def inbox_ddl() -> sql.Composed:
    """``create table if not exists raw.webhook_inbox`` from the declaration in ``riskloop.core.schema``."""
    cols = [sql.SQL("{} {} not null").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
            for c in WEBHOOK_INBOX.columns]
    cols.append(sql.SQL("{} xid8 not null default pg_current_xact_id()").format(sql.Identifier(XID_COLUMN)))
    cols.append(sql.SQL("primary key ({})").format(sql.SQL(", ").join(map(sql.Identifier, WEBHOOK_INBOX.key))))
    return sql.SQL("create table if not exists {}.{} ({})").format(
        sql.Identifier(RAW_SCHEMA), sql.Identifier(WEBHOOK_INBOX.name), sql.SQL(", ").join(cols))


def create_inbox(conn: psycopg.Connection) -> None:
    """Create schema ``raw``, the inbox, its ``_xid`` column and index and the notify trigger, each
    only if missing. Runs in the caller's transaction (no commit) under a transaction-scoped
    advisory lock: concurrent creators (receivers starting, loaders) would race in the catalog."""
    table = sql.Identifier(RAW_SCHEMA, WEBHOOK_INBOX.name)
    conn.execute("select pg_advisory_xact_lock(hashtext('riskloop.webhooks.ddl'))")
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(RAW_SCHEMA)))
    conn.execute(inbox_ddl())
    has_xid = conn.execute(
        "select 1 from information_schema.columns where table_schema = %s and table_name = %s and column_name = %s",
        (RAW_SCHEMA, WEBHOOK_INBOX.name, XID_COLUMN)).fetchone()
    if not has_xid:  # an inbox created before the stream existed: its rows get the alter's xid
        conn.execute(sql.SQL("alter table {} add column {} xid8 not null default pg_current_xact_id()").format(
            table, sql.Identifier(XID_COLUMN)))
    conn.execute(sql.SQL("create index if not exists {} on {} ({})").format(
        sql.Identifier(f"{WEBHOOK_INBOX.name}{XID_COLUMN}"), table, sql.Identifier(XID_COLUMN)))
    has_trigger = conn.execute(
        "select 1 from pg_trigger where tgname = %s and tgrelid = %s::regclass", (_TRIGGER, INBOX)).fetchone()
    if not has_trigger:
        fn = sql.Identifier(RAW_SCHEMA, _NOTIFY_FN)
        conn.execute(sql.SQL(
            "create or replace function {}() returns trigger language plpgsql as "
            "$$ begin perform pg_notify({}, ''); return null; end $$").format(fn, sql.Literal(CHANNEL)))
        conn.execute(sql.SQL("create trigger {} after insert on {} for each statement execute function {}()").format(
            sql.Identifier(_TRIGGER), table, fn))


def ensure_inbox(conn: psycopg.Connection) -> None:
    """:func:`create_inbox` in its own transaction."""
    with conn.transaction():
        create_inbox(conn)
