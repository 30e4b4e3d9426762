"""The warehouse's own tables, versioned: Alembic migrations in ``versions/``, applied in order by
``riskloop up`` and ``riskloop db upgrade`` (a deployment runs the latter before it rolls out new
code). No other process creates or alters these tables: a serving process only checks, at start,
that the warehouse is at the revision its code expects (:func:`pending`).

The raw layer's loaded tables and their quarantine copies are not here: their columns are the data
contract (:mod:`riskloop.core.schema`), and the loaders create them from it on a table's first load.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from riskloop.core import db
from riskloop.core.config import Settings

if TYPE_CHECKING:
    import psycopg
    from alembic.config import Config

log = logging.getLogger(__name__)

# The newest revision in versions/ (tests/test_migrations.py checks it is Alembic's head): what the
# code of this checkout expects, readable without importing Alembic.
HEAD = "0012"
VERSION_TABLE = "alembic_version"


def config(settings: Settings) -> "Config":
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["settings"] = settings
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> str | None:
    """Apply every migration up to ``revision``, then the components' roles and grants
    (:func:`riskloop.core.roles.apply`: new tables get theirs); returns the revision the warehouse is
    then at. Concurrent callers (two deployments, test workers) are serialised on an advisory lock."""
    from alembic import command

    from riskloop.core import roles

    command.upgrade(config(settings), revision)
    roles.apply(settings)
    return current(settings)


def revision_of(conn: "psycopg.Connection") -> str | None:
    """The revision of the warehouse ``conn`` is connected to (None: never migrated)."""
    if conn.execute("select to_regclass(%s)", (f"public.{VERSION_TABLE}",)).fetchone()[0] is None:
        return None
    row = conn.execute(f"select version_num from public.{VERSION_TABLE}").fetchone()
    return None if row is None else row[0]


def current(settings: Settings) -> str | None:
    """The warehouse's revision (None: never migrated)."""
    with db.connect(settings.model_copy(update={"db_role": None})) as conn:
        return revision_of(conn)


def pending_on(conn: "psycopg.Connection", settings: Settings) -> str | None:
    """Why the warehouse ``conn`` reaches cannot serve this code yet (None: it is at :data:`HEAD`)."""
    at = revision_of(conn)
    if at == HEAD:
        return None
    return (f"warehouse {settings.warehouse_db} is at revision {at or 'none'}, this code expects {HEAD}: "
            "run `riskloop db upgrade`")


def pending(settings: Settings) -> str | None:
    """:func:`pending_on` with a connection of its own."""
    with db.connect(settings) as conn:
        return pending_on(conn, settings)
