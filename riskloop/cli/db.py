"""``riskloop db upgrade | current``: the warehouse's own tables, through its migrations."""

from __future__ import annotations

import json

import typer

from riskloop.core.config import get_settings

app = typer.Typer()
db_app = typer.Typer(help="The warehouse's tables, versioned (Alembic migrations in riskloop/core/migrations).",
                     no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(revision: str = typer.Option("head", help="Migrate up to this revision.")) -> None:
    """Apply the migrations the warehouse has not had yet (what a deployment runs before rolling out new
    code; `riskloop up` runs it too). Prints the revision before and after as JSON."""
    from riskloop.core import migrations

    settings = get_settings()
    before = migrations.current(settings)
    after = migrations.upgrade(settings, revision)
    typer.echo(json.dumps({"database": settings.warehouse_db, "before": before, "after": after}))


@db_app.command("current")
def current() -> None:
    """The warehouse's revision and the one this code expects; exit 1 when they differ."""
    from riskloop.core import migrations

    settings = get_settings()
    at = migrations.current(settings)
    typer.echo(json.dumps({"database": settings.warehouse_db, "current": at, "expected": migrations.HEAD}))
    raise typer.Exit(0 if at == migrations.HEAD else 1)


app.add_typer(db_app, name="db")
