"""``riskloop retention apply``: delete what each data class has kept long enough."""

from __future__ import annotations

import json
from typing import Optional

import typer

from riskloop.cli.common import acting_principal, console
from riskloop.core.config import get_settings

app = typer.Typer()
retention_app = typer.Typer(help="Retention per data class (RISKLOOP_RETENTION_<CLASS>_DAYS).", no_args_is_help=True)


@retention_app.command("apply")
def apply(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted; delete nothing."),
    data_class: Optional[list[str]] = typer.Option(
        None, "--class", help="Only these data classes (raw_payloads, cases, decisions, model_artifacts)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run as JSON on stdout."),
) -> None:
    """Delete raw payloads, closed cases, decisions and unused model versions past their retention period
    (unset periods keep everything). Every run, dry or not, is recorded in governance.retention_runs with
    the CLI's principal (RISKLOOP_API_KEY, an admin's) as its actor."""
    from rich.table import Table

    from riskloop.governance import retention

    # the governance role: it deletes through the owner's governance.retention_purge, never by a DELETE of its own
    settings = get_settings().as_role("governance")
    actor = acting_principal(settings, "admin").actor  # deleting data is an administrator's act
    try:
        run = retention.apply(settings, dry_run=dry_run, actor=actor,
                              classes=tuple(data_class) if data_class else retention.DATA_CLASSES)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if json_out:
        typer.echo(json.dumps(run.as_dict()))
        return
    table = Table(title=f"retention {'dry run' if dry_run else 'applied'} ({run.run_id})")
    for column in ("data class", "cutoff", "table", "rows" if not dry_run else "rows that would go"):
        table.add_column(column)
    for c in run.classes:
        if c.cutoff is None:
            table.add_row(c.data_class, "kept (no period set)", "", "")
        for target, n in c.rows.items():
            table.add_row(c.data_class, c.cutoff.isoformat(timespec="seconds"), target, str(n))
    console.print(table)


app.add_typer(retention_app, name="retention")
