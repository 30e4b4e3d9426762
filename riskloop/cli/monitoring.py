"""``riskloop monitor``: drift, performance and tripwires, through the alert sinks."""

from __future__ import annotations

import json

import typer

from riskloop.core.config import get_settings

app = typer.Typer()


@app.command()
def monitor(model: str = typer.Option("riskloop-fraud", help="Registered model name.")) -> None:
    """Evidently drift of the champion's recent scoring inputs against its training reference, and
    the decision-stream tripwires; raises or resolves alerts (with hysteresis) through the sinks.
    Prints the drift result and the alerts sent as one JSON object on stdout."""
    from riskloop.monitoring.checks import check_and_alert
    from riskloop.monitoring.drift import run_drift

    settings = get_settings()
    try:
        result = run_drift(settings, model_name=model)
    except Exception:
        check_and_alert(settings, None)  # the tripwires do not need the model: still check them
        raise
    sent = check_and_alert(settings, result)
    typer.echo(json.dumps({**result.to_dict(), "alerts": [a.to_dict() for a in sent]}, default=str))
