"""``riskloop policy``: decision policies — what a candidate would have decided on history."""

from __future__ import annotations

import json
from typing import Optional

import typer

from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer()
policy_app = typer.Typer(help="Decision policies: rules, thresholds and lists, and what they would have decided.",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("backtest")
def backtest(
    version: str = typer.Argument(..., help="The candidate policy, e.g. fraud-v2."),
    from_: str = typer.Option(..., "--from", help="Start of the period (ISO date or time, UTC if no zone), inclusive."),
    to: str = typer.Option(..., "--to", help="End of the period, exclusive."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Labels as known at this time (default: the newest "
                                        "payment in marts.fct_transactions)."),
    examples: int = typer.Option(20, min=0, max=1000, help="Changed decisions to show."),
    workers: int = typer.Option(2, min=1, max=16, help="Queries reading consecutive parts of the period at once."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON on stdout."),
) -> None:
    """Replay the decision log of [--from, --to) under the candidate policy (the logged score, request,
    features and signals; no model, no network): decisions that change by outcome, approval/review/deny
    rates before and after, fraud caught and good payments impacted on matured labels, the review
    queue per day, and examples. Exit 2 when the policy or the period is refused."""
    from riskloop.decisions.backtest import BacktestError, parse_time
    from riskloop.decisions.backtest import backtest as run
    from riskloop.decisions.policy import PolicyError, policy_by_id

    try:
        policy = policy_by_id(version)
        start, end = parse_time(from_), parse_time(to)
        report = run(get_settings(), policy, start, end, as_of=parse_time(as_of) if as_of else None,
                     examples=examples, workers=workers)
    except (PolicyError, BacktestError, ValueError) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict(), default=str))
        return
    _render(report)


def _money(m) -> str:
    from riskloop.core.money import minor_to_major

    amounts = ", ".join(f"{minor_to_major(v, c):,.2f} {c}" for c, v in sorted(m.amount_minor.items()))
    return f"{m.n:,}" + (f" ({amounts})" if amounts else "")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def _render(report) -> None:
    """The report as rich tables on the console (stderr; stdout is for --json)."""
    from rich.table import Table

    console.print(f"[bold]{report.policy_id}[/bold] on {report.product} decisions "
                  f"{report.period_from.isoformat()} to {report.period_to.isoformat()}: "
                  f"{report.n_decisions:,} decisions, {report.n_changed:,} change ({report.seconds:.1f} s)")
    matrix = Table(title="logged (rows) → candidate (columns)")
    matrix.add_column("")
    for d in report.outcomes:
        matrix.add_column(d, justify="right")
    for a in report.outcomes:
        matrix.add_row(a, *(f"[bold]{n:,}[/bold]" if a != b and n else f"{n:,}" for b, n in report.matrix[a].items()))
    console.print(matrix)
    rates = Table(title="rates")
    for col in ("", "before", "after"):
        rates.add_column(col, justify="right")
    for name in ("approval", "review", "deny"):
        rates.add_row(name, _pct(report.rates["before"][name]), _pct(report.rates["after"][name]))
    console.print(rates)
    lab = report.labels
    labels = Table(title=f"matured labels as of {lab.as_of.isoformat() if lab.as_of else 'n/a'} "
                   f"(payments >= {lab.label_delay_days} days old; {lab.matured:,} matured, {lab.unlabelled:,} not)")
    for col in ("", "before", "after", "change"):
        labels.add_column(col, justify="right")
    labels.add_row("fraud caught", _money(lab.fraud_caught_before), _money(lab.fraud_caught_after),
                   f"+{_money(lab.fraud_newly_caught)} / -{_money(lab.fraud_newly_missed)}")
    labels.add_row("good impacted", _money(lab.good_impacted_before), _money(lab.good_impacted_after),
                   f"+{_money(lab.good_newly_impacted)} / -{_money(lab.good_released)}")
    console.print(labels)
    per_day = report.review_added_per_day
    console.print(f"review queue: {per_day['mean']:+.1f} decisions per day on average, at most {per_day['max']:+.0f} "
                  f"(over {per_day['days']} days)")
    for feat, n in report.inputs_missing.items():
        if n:
            console.print(f"[yellow]{feat}: absent from {n:,} logged decisions (a rule on it cannot fire there)[/yellow]")
    if report.examples:
        ex = Table(title="examples of changed decisions")
        for col in ("decision", "at", "score", "amount", "before", "after", "rules after", "label"):
            ex.add_column(col)
        for e in report.examples:
            ex.add_row(e.decision_id, e.decided_at.isoformat(timespec="seconds"),
                       "n/a" if e.score is None else f"{e.score:.3f}",
                       f"{e.amount_minor or 0:,} {e.currency or ''}", e.before, e.after, ", ".join(e.rules_after), e.label)
        console.print(ex)
