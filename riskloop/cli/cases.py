"""``riskloop cases``: the analysts' queue from a terminal (the same events as ``/v1/cases``)."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer()
cases_app = typer.Typer(help="The case queue: review decisions, failed step-ups and missed fraud, worked by analysts.",
                        no_args_is_help=True)

_ANALYST = typer.Option(None, "--analyst", help="Who you are (default RISKLOOP_ANALYST, else user@host).")
_JSON = typer.Option(False, "--json", help="Machine-readable output on stdout.")


def _analyst(name: Optional[str]) -> str:
    from riskloop.core.db import who

    return name or get_settings().analyst or who()


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str))


def _run(action: str, case_id: str, analyst: Optional[str], *args: Any) -> None:
    """One analyst action; a refused one prints why and exits 1 (2 for an unknown case)."""
    from riskloop.core import db
    from riskloop.decisions import cases

    actor = _analyst(analyst)
    try:
        with db.connect(get_settings().as_role("governance"), autocommit=True) as conn:
            row = getattr(cases, action)(conn, case_id, actor, *args)
    except cases.CaseError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2 if isinstance(exc, cases.CaseNotFound) else 1) from exc
    _dump(row)


@cases_app.command("list")
def cases_list(
    status: list[str] = typer.Option(["open", "in_review"], "--status", help="open, in_review, closed (repeatable)."),
    priority: Optional[str] = typer.Option(None, help="Only this priority (e.g. P1)."),
    assignee: Optional[str] = typer.Option(None, help="Only cases claimed by this analyst."),
    source: Optional[str] = typer.Option(None, help="review, step_up_failed or chargeback."),
    entity: Optional[str] = typer.Option(None, help="A customer id or card token."),
    overdue: Optional[bool] = typer.Option(None, "--overdue/--not-overdue", help="Past their due time, or not."),
    sort: str = typer.Option("priority", help="priority, age, due or updated."),
    limit: int = typer.Option(50, min=1, max=500),
    offset: int = typer.Option(0, min=0),
    as_json: bool = _JSON,
) -> None:
    """The queue: unclosed cases by priority, then age."""
    from rich.table import Table

    from riskloop.core import db
    from riskloop.decisions import cases

    try:
        with db.connect(get_settings().as_role("analyst"), autocommit=True) as conn:  # reads only
            rows, total = cases.list_cases(conn, status=status, priority=priority, assignee=assignee, source=source,
                                           entity=entity, overdue=overdue, sort=sort, limit=limit, offset=offset)
    except cases.CaseError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if as_json:
        _dump({"cases": rows, "total": total, "limit": limit, "offset": offset})
        return
    table = Table(title=f"cases ({len(rows)} of {total})")
    cols = ("case_id", "priority", "status", "assignee", "source", "customer_id", "n_decisions", "max_score",
            "amount_at_risk", "opened_at", "due_at")
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(*("" if r[c] is None else f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    console.print(table)


@cases_app.command("show")
def cases_show(case_id: str = typer.Argument(..., help="The case id."), as_json: bool = _JSON) -> None:
    """A case: its state, events, decisions (reasons, rules, features) and the entity's recent payments (JSON)."""
    from riskloop.core import db
    from riskloop.decisions import cases

    try:
        with db.connect(get_settings().as_role("analyst"), autocommit=True) as conn:
            case = cases.get(conn, case_id)
    except cases.CaseError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(case, default=str, indent=None if as_json else 2))


@cases_app.command("claim")
def cases_claim(case_id: str = typer.Argument(...), analyst: Optional[str] = _ANALYST) -> None:
    """Take an open case (refused if someone else has it)."""
    _run("claim", case_id, analyst)


@cases_app.command("release")
def cases_release(case_id: str = typer.Argument(...), analyst: Optional[str] = _ANALYST) -> None:
    """Give a case you claimed back to the queue."""
    _run("release", case_id, analyst)


@cases_app.command("note")
def cases_note(case_id: str = typer.Argument(...), text: str = typer.Argument(..., help="The note."),
               analyst: Optional[str] = _ANALYST) -> None:
    """Add a note to an unclosed case."""
    _run("note", case_id, analyst, text)


@cases_app.command("close")
def cases_close(
    case_id: str = typer.Argument(...),
    disposition: str = typer.Option(..., "--disposition", help="fraud_confirmed, legitimate or inconclusive."),
    reason: str = typer.Option(..., "--reason", help="Why (required; recorded with the verdict)."),
    analyst: Optional[str] = _ANALYST,
) -> None:
    """Close a case you claimed: the disposition becomes a fraud label (inconclusive: none)."""
    _run("close", case_id, analyst, disposition, reason)


@cases_app.command("stats")
def cases_stats(as_json: bool = _JSON) -> None:
    """Queue depth by priority, oldest open case, SLA breaches, time to disposition, review precision and
    analyst agreement with the model."""
    from rich.table import Table

    from riskloop.core import db
    from riskloop.decisions.case_stats import stats

    settings = get_settings().as_role("analyst")
    with db.connect(settings, autocommit=True) as conn:
        s = stats(conn, settings)
    if as_json:
        _dump(s)
        return
    queue = Table(title="queue (unclosed cases)")
    for col in ("priority", "status", "cases", "overdue", "oldest age (h)"):
        queue.add_column(col)
    for q in s["queue"]:
        queue.add_row(q["priority"], q["status"], str(q["cases"]), str(q["overdue"]), f"{q['oldest_age_s'] / 3600:.1f}")
    console.print(queue)

    def fmt(x: Any, scale: float = 1.0, unit: str = "") -> str:
        return "-" if x is None else f"{x / scale:.2f}{unit}"

    figures = Table(title=f"closed in the last {s['window_days']} days: {s['closed']}")
    figures.add_column("figure")
    figures.add_column("value")
    for name, value in (
            ("oldest open case", fmt(s["oldest_open_age_s"], 3600, " h")),
            ("overdue (past SLA)", str(s["overdue"])),
            ("time to disposition p50", fmt(s["time_to_disposition_p50_s"], 3600, " h")),
            ("time to disposition p90", fmt(s["time_to_disposition_p90_s"], 3600, " h")),
            ("dispositions", ", ".join(f"{k} {v}" for k, v in s["dispositions"].items())),
            ("review precision", fmt(s["review_precision"])),
            ("analyst agreement with the model", fmt(s["model_agreement"])),
            (f"opened / closed, last {s['flow_window_hours']:g} h", f"{s['opened_in_window']} / {s['closed_in_window']}")):
        figures.add_row(name, value)
    console.print(figures)


@cases_app.command("sync")
def cases_sync() -> None:
    """Link every decision that should have a case and has none: review decisions, failed step-ups and
    (RISKLOOP_CASES_OPEN_ON_CHARGEBACK) allowed payments charged back as fraud. Idempotent (JSON counts)."""
    from riskloop.decisions.cases import sync

    _dump(sync(get_settings().as_role("governance")))


app.add_typer(cases_app, name="cases")
