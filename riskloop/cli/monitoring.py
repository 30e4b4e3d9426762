"""``riskloop monitor``: drift, performance and tripwires, through the alert sinks; ``riskloop watch``: the
tripwires every minute; ``riskloop check settlements``: the settlement reconciliation breaks."""

from __future__ import annotations

import json

import typer

from riskloop.core.config import get_settings

app = typer.Typer()
check_app = typer.Typer(help="Checks that page on-call outside the monitor run.", no_args_is_help=True)
app.add_typer(check_app, name="check")


@app.command()
def monitor(model: str = typer.Option("riskloop-fraud", help="Registered model name (riskloop-fraud, riskloop-credit).")
            ) -> None:
    """Evidently drift of the champion's recent scoring inputs against its training reference, and
    the decision-stream tripwires; raises or resolves alerts (with hysteresis) through the sinks.
    Prints the drift result and the alerts sent as one JSON object on stdout."""
    from riskloop.monitoring.checks import check_and_alert
    from riskloop.monitoring.drift import run_drift

    settings = get_settings().as_role("governance")  # drift reports and alerts, nothing else
    try:
        result = run_drift(settings, model_name=model)
    except Exception:
        check_and_alert(settings)  # the tripwires do not need the model: still check them
        raise
    sent = check_and_alert(settings, [result])
    typer.echo(json.dumps({**result.to_dict(), "alerts": [a.to_dict() for a in sent]}, default=str))


@app.command()
def watch(rounds: int = typer.Option(0, min=0, help="Stop after this many rounds (0: until SIGINT/SIGTERM).")) -> None:
    """The tripwire watcher: the decision-stream tripwires (approval-rate drop, review-rate spike, override
    spike, degraded rate, latency, dead letters) every RISKLOOP_WATCH_INTERVAL_S over the last
    RISKLOOP_WATCH_WINDOW_MINUTES, raising and resolving alerts (with hysteresis) through the sinks.
    `riskloop up` runs it as a managed process (RISKLOOP_WATCH_SERVICE)."""
    import signal
    import threading

    from riskloop.monitoring.watch import run

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run(get_settings().as_role("governance"), stop, rounds=rounds or None)


@check_app.command("settlements")
def check_settlements() -> None:
    """Settlement reconciliation breaks (amount_mismatch, unknown_payment, not_captured) per processor over
    its newest RISKLOOP_SETTLEMENT_BREAK_FILES files, against RISKLOOP_SETTLEMENT_BREAK_RATE; raises or
    resolves the settlement_breaks alert (with hysteresis). Prints the checks and the alerts sent as JSON."""
    from riskloop.core.alerts import process
    from riskloop.monitoring.reconciliation import evaluate

    settings = get_settings().as_role("governance")
    checks = evaluate(settings)
    sent = process(settings, checks)
    typer.echo(json.dumps({"checks": [{"key": c.key, "breached": c.breached, "summary": c.summary, "details": c.details}
                                      for c in checks], "alerts": [a.to_dict() for a in sent]}, default=str))
