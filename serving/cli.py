"""``riskloop serve | decisions``, registered with the ``riskloop`` command through the
``riskloop.cli`` entry point (riskloop itself never imports serving)."""

from __future__ import annotations

import json

import typer

from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer()


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(0, "--workers", min=0, help="Worker processes (0: RISKLOOP_SERVING_WORKERS, "
                                "default one per core, at most 4, less one for an embedded Postgres). With more than one, "
                                "known devices, the canary watcher and "
                                "/metrics are shared across them."),
) -> None:
    """Serve the scoring API (POST /v1/score/fraud) with the champion model."""
    from serving.app import run

    run(host, port, workers or None)


decisions_app = typer.Typer(help="The decision log: explain and verify logged decisions.", no_args_is_help=True)


@decisions_app.command("replay")
def decisions_replay(
    decision_id: str = typer.Argument(..., help="decision_id of a serving.decision_log row."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Recompute a logged decision from its logged features, its model version and its policy
    version; exit 1 if it does not match what was decided (2 if it cannot be replayed)."""
    from serving.replay import ReplayError, replay

    try:
        result = replay(get_settings(), decision_id)
    except ReplayError as exc:
        console.print(f"[red]cannot replay:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
    else:
        console.print(f"decision {result.decision_id} ({result.product}, {result.model}, "
                      f"policy {result.policy_version})")
        for key in ("score", "decision", "rules"):
            console.print(f"  {key:<9} logged {result.logged[key]!s:<28} replayed {result.replayed[key]}")
        console.print(f"  reasons   logged {[r['code'] for r in result.logged['reasons']]}  "
                      f"replayed {[r['code'] for r in result.replayed['reasons']]}")
        console.print("[green]matches[/green]" if result.matches
                      else "[red]MISMATCH[/red]: " + "; ".join(result.mismatches))
    if not result.matches:
        raise typer.Exit(1)


app.add_typer(decisions_app, name="decisions")
