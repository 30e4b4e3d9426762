"""``riskloop audit``: audits of what riskloop stores."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from riskloop.core.config import get_settings

app = typer.Typer()


audit_app = typer.Typer(help="Audits of what riskloop stores.", no_args_is_help=True)


@audit_app.command("pan")
def audit_pan(
    path: list[Path] = typer.Option([], "--path", help="Also scan this file or directory (repeatable)."),
    no_database: bool = typer.Option(False, "--no-database", help="Scan files only."),
) -> None:
    """Scan the warehouse, logs, artifacts, landed and batch files for card numbers in clear; exit 1 on any hit.

    Prints a JSON report (locations and masked numbers only) on stdout.
    """
    from riskloop.ops.audit import audit_pan as run_audit

    report = run_audit(get_settings(), path, database=not no_database)
    typer.echo(json.dumps(report.to_dict()))
    raise typer.Exit(0 if report.clean else 1)


app.add_typer(audit_app, name="audit")
