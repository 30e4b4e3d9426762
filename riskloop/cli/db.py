"""``riskloop db upgrade | current | roles``: the warehouse's own tables, through its migrations."""

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


@db_app.command("roles")
def roles_(sql: bool = typer.Option(False, "--sql", help="Print the SQL (a psql script) for a DBA instead of "
                                    "running it: when riskloop's login may not create roles.")) -> None:
    """The components' database roles (riskloop_ingest, _transform, _serving, _governance, _analyst) and their
    grants: created or brought up to date as the owner (what `riskloop up` and `riskloop db upgrade` do), or
    printed as SQL for a DBA. Passwords come from <home>/secrets/pg_<role> and are never printed."""
    from riskloop.core import roles
    settings = get_settings()
    if sql:
        typer.echo(roles.dba_script(settings.owner_pg.user, settings.warehouse_db, settings.feast_db), nl=False)
        return
    done = roles.apply(settings)
    typer.echo(json.dumps({"database": settings.warehouse_db, **done}))
    raise typer.Exit(1 if done["missing"] else 0)


app.add_typer(db_app, name="db")
