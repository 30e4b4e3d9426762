"""``riskloop demo``: the whole loop on the embedded stack."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from riskloop.cli.common import console
from riskloop.core.config import get_settings
from riskloop.ops.demo import DemoConfig

app = typer.Typer()


@app.command()
def demo(
    days: int = typer.Option(DemoConfig.days, help="Days to simulate."),
    customers: int = typer.Option(DemoConfig.customers, help="Customers to simulate."),
    seed: int = typer.Option(42, help="Simulation seed."),
    requests: int = typer.Option(300, help="Transactions to score over HTTP."),
    port: int = typer.Option(8765, help="Port for the demo's scoring server."),
    summary: Optional[Path] = typer.Option(None, help="Where to write the summary (default ./demo-summary.json)."),
) -> None:
    """Run the whole loop on the embedded stack and write demo-summary.json."""
    from rich.table import Table

    from riskloop.ops.demo import STAGES, run_demo

    cfg = DemoConfig(days=days, customers=customers, seed=seed, n_requests=requests, serve_port=port)
    if summary is not None:
        cfg.summary_path = summary

    def on_change(stage: str, state: str) -> None:
        style = {"running": "yellow", "ok": "green", "failed": "red"}[state]
        doing = f": {STAGES[stage]}" if state == "running" and stage in STAGES else ""
        console.print(f"[{style}]{state:>7}[/{style}]  {stage}{doing}")

    try:
        summary = run_demo(get_settings(), cfg, on_change=on_change)
    except Exception as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        console.print(f"partial summary in {cfg.summary_path}")
        raise typer.Exit(1) from exc
    table = Table(title="riskloop demo")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for name, st in summary["stages"].items():
        table.add_row(name, st["status"], f"{st['seconds']:.1f}")
    console.print(table)
    fraud, credit, scoring = summary.get("fraud", {}), summary.get("credit", {}), summary.get("scoring", {})
    console.print(f"fraud v{fraud.get('version')}: AUC {fraud.get('auc_roc')}  AP {fraud.get('average_precision')}  "
                  f"CP@100 {fraud.get('card_precision_at_100')} (trained on {_days(fraud.get('train_window'))}, "
                  f"tested on {_days(fraud.get('test_window'))})")
    console.print(f"credit v{credit.get('version')}: AUC {credit.get('auc_roc')}  Brier {credit.get('brier')}")
    console.print(f"scoring: {scoring.get('n')} requests, p50 {scoring.get('p50_ms')} ms, "
                  f"p99 {scoring.get('p99_ms')} ms, decisions {scoring.get('decisions')}")
    rt = summary.get("realtime", {})
    if "skipped" in rt:
        console.print(f"real-time: skipped ({rt['skipped']})")
    else:
        card_online = rt.get("online", {}).get("card", {})
        console.print(f"real-time: {rt.get('webhooks_accepted')} webhooks → riskloop stream → online "
                      f"{rt.get('card_token')}: {card_online}; matches what was sent: {rt.get('online_equals_expected')}; "
                      f"accepted → online p50 {rt.get('accepted_to_online_ms', {}).get('p50')} ms, "
                      f"max {rt.get('accepted_to_online_ms', {}).get('max')} ms")
    console.print(f"drift: {summary.get('drift', {}).get('verdict')}   promotion: "
                  f"{summary.get('promotion', {}).get('decision')} ({summary.get('promotion', {}).get('reason')})")
    console.print(f"total {summary['total_seconds']:.0f}s; summary written to {cfg.summary_path}")


def _days(window: list[str] | None) -> str:
    return f"{window[0]} to {window[1]} (end excluded)" if window else "?"
