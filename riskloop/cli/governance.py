"""``riskloop promote | review | canary``: the gates between a challenger and live traffic."""

from __future__ import annotations

import json
from typing import Optional

import typer

from riskloop.cli.common import acting_principal, console
from riskloop.core.config import get_settings

app = typer.Typer()


@app.command()
def promote(
    model: str = typer.Option("riskloop-fraud", help="Registered model name."),
    margin: float = typer.Option(0.0, help="Tolerated metric loss of the challenger."),
    report_id: Optional[str] = typer.Option(
        None, "--report-id", help="Gate on this recorded drift check (`riskloop monitor` printed its id), as the "
        "promote DAG does, instead of running a fresh one now."),
) -> None:
    """Run the promotion gate: challenger → champion only if no worse, drift not critical, its training
    data passed the data contracts, approved by a reviewer and (unless RISKLOOP_CANARY_REQUIRED=false)
    its canary passed. Prints the decision as one JSON object on stdout."""
    from riskloop.governance.promotion import evaluate_promotion
    from riskloop.monitoring.drift import UnknownDriftCheck, recorded_drift, run_drift

    settings = get_settings().as_role("governance")
    actor = acting_principal(settings, "promote_model").actor
    if report_id is None:
        drift = run_drift(settings, model_name=model)
    else:
        try:
            drift = recorded_drift(settings, model, report_id)
        except UnknownDriftCheck as exc:
            console.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(2) from exc
    decision = evaluate_promotion(settings, model_name=model, drift=drift, margin=margin, actor=actor)
    typer.echo(json.dumps(decision.to_dict(), default=str))


review_app = typer.Typer(help="Reviewer approval of challengers (four eyes, bound to the model's content hash).",
                         no_args_is_help=True)


@review_app.command("list")
def review_list(
    model: Optional[str] = typer.Option(None, help="Registered model name (default: every model)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Challengers that are not the champion, with their review state."""
    from rich.table import Table

    from riskloop.governance.review import pending

    rows = pending(get_settings().as_role("governance"), model)
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    table = Table(title="challengers")
    for col in ("model_name", "version", "champion_version", "author", "review", "reviewed_by", "created_at"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c] or "") for c in ("model_name", "version", "champion_version", "author", "review",
                                                  "reviewed_by", "created_at")))
    console.print(table)


@review_app.command("show")
def review_show(
    model: str = typer.Argument(..., help="Registered model name."),
    version: Optional[str] = typer.Argument(None, help="Version (default: the challenger)."),
) -> None:
    """Model card, metrics vs the champion, drift verdict, canary figures and review history (JSON)."""
    from riskloop.governance.review import ReviewError, card

    try:
        typer.echo(json.dumps(card(get_settings().as_role("governance"), model, version), indent=2, default=str))
    except ReviewError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _review(verdict: str, model: str, version: str, reason: str, reviewer: Optional[str]) -> None:
    from riskloop.governance.review import ReviewError, record

    if reviewer is not None:
        console.print("[red]refused:[/red] --reviewer no longer chooses who you are: the CLI acts as the principal "
                      "of its key (RISKLOOP_API_KEY)")
        raise typer.Exit(2)
    settings = get_settings().as_role("governance")
    principal = acting_principal(settings, "review_model")
    try:
        approval = record(settings, model, version, verdict, principal, reason)
    except ReviewError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(approval.to_dict()))


_REASON = typer.Option(..., "--reason", help="Why (required; recorded in the audit row).")
_REVIEWER = typer.Option(None, "--reviewer", hidden=True,
                         help="Refused: the reviewer is the principal of RISKLOOP_API_KEY.")


@review_app.command("approve")
def review_approve(model: str = typer.Argument(..., help="Registered model name."),
                   version: str = typer.Argument(..., help="Version to approve."),
                   reason: str = _REASON, reviewer: Optional[str] = _REVIEWER) -> None:
    """Approve a version's current artifact (not allowed for the author of its run)."""
    _review("approved", model, version, reason, reviewer)


@review_app.command("reject")
def review_reject(model: str = typer.Argument(..., help="Registered model name."),
                  version: str = typer.Argument(..., help="Version to reject."),
                  reason: str = _REASON, reviewer: Optional[str] = _REVIEWER) -> None:
    """Reject a version: the promotion gate refuses it until a later approval."""
    _review("rejected", model, version, reason, reviewer)


app.add_typer(review_app, name="review")


canary_app = typer.Typer(help="The challenger on live traffic: canary (a share decides) or shadow (scores only); "
                         "its figures gate promotion, its tripwires roll it back.", no_args_is_help=True)
_MODEL = typer.Option("riskloop-fraud", "--model", help="Registered model name.")


@canary_app.command("start")
def canary_start(
    model: str = _MODEL,
    share: Optional[float] = typer.Option(None, help="Share of traffic for the challenger (default "
                                          "RISKLOOP_CANARY_SHARE)."),
    mode: str = typer.Option("canary", help="canary (the share decides with the challenger) or shadow (both score, "
                             "the champion decides; does not pass the promotion gate)."),
    min_minutes: Optional[float] = typer.Option(None, help="Minimum duration (default RISKLOOP_CANARY_MIN_MINUTES)."),
    min_decisions: Optional[int] = typer.Option(None, help="Minimum scored challenger decisions (default "
                                                "RISKLOOP_CANARY_MIN_DECISIONS)."),
    reason: str = typer.Option("canary started", help="Why (recorded)."),
) -> None:
    """Start a canary of the current @challenger; serving picks it up within RISKLOOP_SERVING_CANARY_POLL_S."""
    from riskloop.governance.canary import CanaryError, start

    settings = get_settings().as_role("governance")
    actor = acting_principal(settings, "run_canary").actor
    try:
        state = start(settings, model, share=share, mode=mode, min_minutes=min_minutes,
                      min_decisions=min_decisions, reason=reason, actor=actor)
    except CanaryError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(state.to_dict(), default=str))


@canary_app.command("status")
def canary_status(model: str = _MODEL) -> None:
    """The current canary state, its figures per arm and the gate's verdict so far (JSON)."""
    from riskloop.governance.canary import status

    typer.echo(json.dumps(status(get_settings().as_role("governance"), model), indent=2, default=str))


@canary_app.command("stop")
def canary_stop(model: str = _MODEL, reason: str = typer.Option("canary stopped", help="Why (recorded).")) -> None:
    """End the running canary (share 0); the challenger alias stays where it is."""
    from riskloop.governance.canary import end

    settings = get_settings().as_role("governance")
    state = end(settings, model, "stop", reason, actor=acting_principal(settings, "run_canary").actor)
    if state is None:
        console.print(f"no canary running for {model}")
        raise typer.Exit(1)
    typer.echo(json.dumps(state.to_dict(), default=str))


@canary_app.command("watch")
def canary_watch(
    model: str = _MODEL,
    interval: Optional[float] = typer.Option(None, help="Seconds between checks (default "
                                             "RISKLOOP_CANARY_WATCH_INTERVAL_S)."),
) -> None:
    """Check the running canary's tripwires forever; a breach rolls it back (share 0, @challenger back,
    recorded, alerted). Serving does the same in its poller unless RISKLOOP_SERVING_CANARY_WATCH=false."""
    from riskloop.governance.canary import watch

    settings = get_settings()
    watch(settings.as_role("governance"), model, interval, actor=acting_principal(settings, "run_canary").actor)


app.add_typer(canary_app, name="canary")
