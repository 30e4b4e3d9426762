"""Alembic's environment for the warehouse: the URL comes from riskloop's settings (never a file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from riskloop.core.config import Settings

_LOCK = "riskloop.migrations"


def run() -> None:
    settings: Settings = context.config.attributes.get("settings") or Settings()
    engine = create_engine(settings.owner_pg.url(settings.warehouse_db))  # migrations are the owner's
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, transactional_ddl=True)
            with context.begin_transaction():
                # One migrator at a time: the second waits, then finds the work done.
                conn.execute(text("select pg_advisory_xact_lock(hashtext(:k))"), {"k": _LOCK})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("riskloop migrations run against a database (no offline SQL generation)")
run()
