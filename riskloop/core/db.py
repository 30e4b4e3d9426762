"""Database access shared by ingestion, contracts, training, serving and monitoring.

One place builds engines and connections from :class:`~riskloop.core.config.Settings`, so every
component reaches the same server the same way (psycopg 3 underneath).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg

from riskloop.core.config import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa


def engine(settings: Settings, database: str | None = None, **kwargs) -> "sa.Engine":
    """A SQLAlchemy engine on the warehouse (or another riskloop database). Caller disposes it.

    SQLAlchemy is imported here, not at module level: the scoring path uses this module for
    plain psycopg connections and should not pay a second to import an ORM it never uses.
    """
    import sqlalchemy as sa

    return sa.create_engine(settings.pg.url(database or settings.warehouse_db), pool_pre_ping=True, **kwargs)


def dsn(settings: Settings, database: str | None = None) -> str:
    """A libpq connection string, for psycopg and command-line tools."""
    return settings.pg.url(database or settings.warehouse_db, driver="")


@contextmanager
def connect(settings: Settings, database: str | None = None, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection that commits on success and rolls back on error."""
    with psycopg.connect(dsn(settings, database), autocommit=autocommit) as conn:
        yield conn


def ensure_schema(conn: psycopg.Connection, name: str) -> None:
    conn.execute(f"create schema if not exists {quote_ident(name)}")


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (for SQL built as text, e.g. asyncpg statements)."""
    return '"' + name.replace('"', '""') + '"'


def append_only_ddl(table: str) -> str:
    """DDL that makes ``schema.table`` append-only in the database itself: UPDATE, DELETE and
    TRUNCATE raise, whoever connects. Audit tables (decisions, promotions) rely on it."""
    schema, name = table.split(".")
    fn = f"{schema}.{name}_append_only"
    return f"""
create or replace function {fn}() returns trigger
language plpgsql as $$
begin
    raise exception '{table} is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger {name}_append_only
    before update or delete on {table}
    for each row execute function {fn}();
create or replace trigger {name}_no_truncate
    before truncate on {table}
    for each statement execute function {fn}();
"""


def ensure_audit_tables(settings: Settings, schema: str, ddl: str, append_only: tuple[str, ...],
                        lock: str = "riskloop.governance.ddl") -> None:
    """Run ``ddl`` in ``schema`` and make ``append_only`` tables refuse UPDATE/DELETE/TRUNCATE.

    Idempotent, and serialised on an advisory lock: two processes starting at once (serving
    replicas, a DAG task) must not race on ``create ... if not exists``."""
    with connect(settings) as conn:
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (lock,))
        ensure_schema(conn, schema)
        conn.execute(ddl + "".join(append_only_ddl(t) for t in append_only))


def who() -> str:
    """``user@host`` of this process: the actor recorded in governance rows written by a job."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def table_checksum(conn: psycopg.Connection, table: str, columns: list[str] | None = None) -> tuple[int, str]:
    """``(row count, md5)`` of ``schema.table`` over ``columns`` (default: all), independent of row order.

    For idempotency checks (a re-run or a backfill must leave the same data): pass the contract
    columns to leave out lineage ones (``_batch_id``, ``_loaded_at``) that record *when* a load ran.
    """
    from psycopg import sql

    schema, name = table.split(".")
    cols = sql.SQL("src.*") if not columns else sql.SQL(", ").join(map(sql.Identifier, columns))
    query = sql.SQL(
        "select count(*), coalesce(md5(string_agg(h, '' order by h)), '') "
        "from (select md5(row({cols})::text) as h from {schema}.{name} as src) t"
    ).format(cols=cols, schema=sql.Identifier(schema), name=sql.Identifier(name))
    count, digest = conn.execute(query).fetchone()
    return int(count), digest
