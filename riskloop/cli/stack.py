"""``riskloop up | down | status | backfill``: the stack and its Airflow."""

from __future__ import annotations

import json

import typer

from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer()


@app.command()
def up(airflow: bool = typer.Option(False, "--airflow", help="Also start Airflow 3 (api-server, scheduler, "
                                    "dag-processor, triggerer; LocalExecutor) on the stack's Postgres.")) -> None:
    """Start the embedded stack (Postgres, MLflow) or connect to the configured one."""
    from riskloop.ops import stack

    info = stack.up(get_settings(), airflow=airflow)
    console.print_json(json.dumps(info))


@app.command()
def down() -> None:
    """Stop what `riskloop up` started (data stays under RISKLOOP_HOME)."""
    from riskloop.ops import stack

    stack.down(get_settings())
    console.print("stack stopped")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout.")) -> None:
    """Where each component is and whether it answers (read as the analyst role: status writes nothing)."""
    from riskloop.ops import stack

    info = stack.status(get_settings().as_role("analyst"))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/bold]: {value}")


@app.command()
def backfill(
    dag_id: str = typer.Argument("riskloop_ingest", help="The DAG to backfill."),
    from_date: str = typer.Option(..., "--from", help="First logical date (ISO, UTC), e.g. 2024-03-01."),
    to_date: str = typer.Option(..., "--to", help="Last logical date (ISO, UTC), inclusive."),
    reprocess: str = typer.Option("none", help="Intervals that already ran: none (skip), failed or completed."),
    max_active_runs: int = typer.Option(1, help="Intervals run at once (each rebuilds the marts: keep 1)."),
    wait: bool = typer.Option(True, help="Wait for the scheduler to finish it and exit non-zero on a failed run."),
) -> None:
    """Backfill a DAG over a date range with the running Airflow scheduler (`riskloop up --airflow`)."""
    from datetime import datetime, timezone

    from riskloop.ops import airflow_services

    def utc(value: str) -> datetime:
        d = datetime.fromisoformat(value)
        return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d

    if reprocess not in ("none", "failed", "completed"):
        raise typer.BadParameter("--reprocess must be none, failed or completed")
    settings = get_settings()
    backfill_id = airflow_services.create_backfill(settings, dag_id, utc(from_date), utc(to_date),
                                                   reprocess=reprocess, max_active_runs=max_active_runs)
    if not wait:
        typer.echo(json.dumps({"backfill_id": backfill_id}))
        return
    with console.status(f"backfill {backfill_id} of {dag_id} running"):
        runs = airflow_services.wait_backfill(settings, backfill_id, timeout_s=24 * 3600)
    typer.echo(json.dumps({"backfill_id": backfill_id, "runs": runs}, indent=2))
    if any(state != "success" for state in runs.values()):
        raise typer.Exit(1)
