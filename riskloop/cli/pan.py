"""``riskloop pan``: the card-token key ring: rotate the key, show keys and progress."""

from __future__ import annotations

import json

import typer

from riskloop.cli.common import acting_principal, console
from riskloop.core.config import get_settings

app = typer.Typer()
pan_app = typer.Typer(help="Card-token keys (riskloop.core.pan): rotation and its progress.", no_args_is_help=True)


def _print_status(doc: dict) -> None:
    from rich.table import Table

    keys = Table(title=f"PAN token keys ({doc['ring']})")
    for column in ("kid", "created", "current"):
        keys.add_column(column)
    for k in doc["keys"]:
        keys.add_row(k["kid"], k["created_at"] or "(RISKLOOP_PAN_TOKEN_KEY / first key)", "yes" if k["current"] else "")
    console.print(keys)
    stale = Table(title=f"rows still under an older key (current {doc['current_kid']})")
    stale.add_column("table.column")
    stale.add_column("rows", justify="right")
    for name, n in doc["rows_under_older_keys"].items():
        stale.add_row(name, str(n))
    console.print(stale)
    console.print(f"tokens of the append-only tables mapped to their current token: {doc['mapped_tokens']}")
    if doc["unfinished"]:
        console.print(f"[yellow]rotation {doc['unfinished']} is unfinished: `riskloop pan rotate` resumes it[/yellow]")


@pan_app.command("status")
def pan_status(json_out: bool = typer.Option(False, "--json", help="Print the status as JSON on stdout.")) -> None:
    """The keys of the ring (never their material), every rotation, and the rows still under an older key."""
    from riskloop.ops.pan_rotation import status

    doc = status(get_settings())
    if json_out:
        typer.echo(json.dumps(doc))
        return
    _print_status(doc)


def _run(batch: int, json_out: bool, new_key: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from riskloop.core.pan import PanKeyMissing
    from riskloop.ops.pan_rotation import RotationError, rotate

    settings = get_settings()
    principal = acting_principal(settings, "admin")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=json_out) as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=max(total, 1))
            bar.update(tasks[name], completed=done, total=max(total, 1))

        try:
            rotation = rotate(settings, principal.actor, batch=batch, progress=progress, new_key=new_key)
        except (RotationError, PanKeyMissing, ValueError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    if json_out:
        typer.echo(json.dumps(rotation.as_dict()))
        return
    console.print(f"rotation {rotation.rotation_id}: {rotation.old_kid} -> {rotation.new_kid} "
                  f"({'resumed, ' if rotation.resumed else ''}{sum(rotation.counts.values())} rows re-keyed or mapped, "
                  f"{rotation.passes} passes)")


@pan_app.command("rotate")
def pan_rotate(
    batch: int = typer.Option(1000, "--batch", min=1, help="Rows per batch (one short transaction each)."),
    json_out: bool = typer.Option(False, "--json", help="Print the rotation as JSON on stdout."),
    show_status: bool = typer.Option(False, "--status", help="Show keys and progress (`riskloop pan status`); rotate nothing."),
) -> None:
    """Make a new card-token key current and re-key every stored token in batches (admin).

    Running processes take the new key within a second, without a restart. Mutable tables are rewritten;
    the append-only ones (decision log, case events) keep their rows, and serving.pan_token_map maps their
    old tokens (join on serving.pan_token_current(token)). A crashed rotation resumes when run again."""
    if show_status:
        pan_status(json_out=json_out)
        return
    _run(batch, json_out, new_key=True)


@pan_app.command("rekey")
def pan_rekey(
    batch: int = typer.Option(1000, "--batch", min=1, help="Rows per batch (one short transaction each)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run as JSON on stdout."),
) -> None:
    """Re-key whatever is still under an older key with the current one, without a new key (admin): a
    writer that outlived the rotation's grace period, a dbt run that straddled it."""
    _run(batch, json_out, new_key=False)


app.add_typer(pan_app, name="pan")
