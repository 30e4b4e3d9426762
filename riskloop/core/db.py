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
    """Create schema ``name`` if it is missing. Checked first: ``create schema if not exists`` needs the
    CREATE privilege on the database even when the schema exists, and component roles do not hold it."""
    if conn.execute("select 1 from pg_namespace where nspname = %s", (name,)).fetchone() is None:
        conn.execute(f"create schema if not exists {quote_ident(name)}")


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (for SQL built as text, e.g. asyncpg statements)."""
    return '"' + name.replace('"', '""') + '"'


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
