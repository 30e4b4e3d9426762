"""``riskloop features skew``: the online values decisions used against what training reads."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Optional

import typer
from rich.table import Table

from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer()
features_app = typer.Typer(help="The feature store seen from the decisions (training-serving skew).",
                           no_args_is_help=True)


@features_app.command("skew")
def skew(
    limit: int = typer.Option(1000, min=1, help="Compare the latest N logged fraud decisions."),
    since: Optional[datetime] = typer.Option(None, help="Only decisions made since (ISO 8601, UTC if no offset)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (keys: compared, mismatches, ...)."),
) -> None:
    """Compare each logged decision's online feature values (and their event times) with the offline
    point-in-time values training reads for the same payment. Exit 1 when any value differs beyond
    the documented cases (late events, scoring of past payments, marts not rebuilt yet)."""
    from datetime import timezone

    from riskloop.monitoring.skew import measure

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    with console.status("comparing online and offline feature values"):
        report = measure(get_settings(), limit=limit, since=since)
    out = report.as_dict()
    if as_json:
        typer.echo(json.dumps(out, default=str))
    else:
        summary = Table("decisions", "compared", "matched", *out["documented"], "mismatches", title="feature skew")
        summary.add_row(str(out["decisions"]), str(out["compared"]), str(out["matched"]),
                        *(str(v) for v in out["documented"].values()), str(len(out["mismatches"])))
        console.print(summary)
        if out["mismatches"]:
            detail = Table("decision", "feature", "kind", "online (value @ time)", "offline (value @ time)")
            for m in out["mismatches"][:50]:
                detail.add_row(m["decision_id"], m["feature"], m["kind"],
                               f"{m['online']['value']} @ {m['online']['event_time']}",
                               f"{m['offline']['value']} @ {m['offline']['event_time']}")
            console.print(detail)
    raise typer.Exit(1 if out["mismatches"] else 0)


app.add_typer(features_app, name="features")
