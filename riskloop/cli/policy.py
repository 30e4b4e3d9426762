"""``riskloop policy``: versions, lists and emergency stops of the policy store (the same calls as
``/v1/policy``), and what a candidate would have decided on history (``backtest``). Who acts is
the CLI's own API key (``RISKLOOP_API_KEY``), never a name typed here."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import typer

from riskloop.cli.common import acting_principal, console
from riskloop.core.config import get_settings

app = typer.Typer()
policy_app = typer.Typer(help="Decision policies as versioned data: drafts, maker-checker approval, lists, "
                         "shadow rules and emergency stops.", no_args_is_help=True)
lists_app = typer.Typer(help="Named lists (cards, customers, terminals, devices, IPs, countries, BINs) the rules "
                        "look up; a change is a draft another person approves, every step an append-only row with a "
                        "reason.", no_args_is_help=True)
policy_app.add_typer(lists_app, name="lists")
app.add_typer(policy_app, name="policy")

_JSON = typer.Option(False, "--json", help="Machine-readable output on stdout.")
_REASON = typer.Option(..., "--reason", help="Why (recorded with the change; required).")
# Who may do what: the same roles as the API (serving.auth.PERMISSIONS).
# the CLI's verbs -> the actions of riskloop.core.identity.PERMISSIONS
_ACTIONS = {"draft": "draft_policy", "review": "review_policy", "lists": "edit_lists", "emergency": "emergency_stop"}


def _caller(action: str) -> str:
    """The actor of the CLI's key (riskloop.core.identity.cli_principal), refused if its role may not do ``action``."""
    return acting_principal(get_settings(), _ACTIONS[action]).actor


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str, indent=None))


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One store call on an autocommit connection; a refusal prints why and exits 1."""
    from riskloop.core import db
    from riskloop.decisions import policy_store as store

    try:
        with db.connect(get_settings().as_role("governance"), autocommit=True) as conn:
            return fn(conn, *args, **kwargs)
    except store.DraftInvalid as exc:
        console.print("[red]draft refused:[/red]")
        for e in exc.errors:
            console.print(f"  {e}")
        raise typer.Exit(1) from exc
    except store.StoreError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from exc


def parse_duration(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m is None:
        raise typer.BadParameter(f"{text!r}: a duration like 90s, 30m, 2h or 1d")
    return timedelta(seconds=float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


# --- versions -------------------------------------------------------------------------------------

@policy_app.command("status")
def status(as_json: bool = _JSON) -> None:
    """The live version of each product and the emergency stops in force."""
    from riskloop.decisions import policy_store as store

    def read(conn: Any) -> dict[str, Any]:
        return {"live": {p: store.live_version(conn, p) for p in ("fraud", "credit")},
                "emergency": store.active_emergency(conn)}

    out = _run(read)
    out["live"] = {p: (f"{p}-v{v}" if v else "configured file") for p, v in out["live"].items()}
    _dump(out) if as_json else console.print_json(json.dumps(out, default=str))


@policy_app.command("versions")
def list_versions(product: Optional[str] = typer.Option(None, help="fraud or credit."), as_json: bool = _JSON) -> None:
    """Stored versions, newest first, with their state (drafted, approved, rejected) and which is live."""
    from rich.table import Table

    from riskloop.decisions import policy_store as store

    rows = _run(store.versions, product)
    if as_json:
        _dump(rows)
        return
    table = Table("id", "state", "live", "author", "created_at", "backtest")
    for r in rows:
        table.add_row(r["id"], r["state"], "yes" if r["live"] else "", r["author"], str(r["created_at"])[:19],
                      str(r["backtest_seq"] or ""))
    console.print(table)


@policy_app.command("show")
def show(policy_id: str = typer.Argument(..., help="fraud-v3, credit-v1, ...")) -> None:
    """A version's history (every step, who, when, why) as JSON lines."""
    from riskloop.decisions import policy_store as store

    for row in _run(store.history, policy_id):
        _dump(row)


@policy_app.command("export")
def export(policy_id: str = typer.Argument(...),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of stdout.")) -> None:
    """A version (stored or shipped) as YAML, to keep in git."""
    from riskloop.decisions import policy_store as store

    text = _run(store.export_yaml, policy_id)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        console.print(f"{policy_id} → {out}")


@policy_app.command("import")
def import_(path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A policy YAML file."),
            note: str = typer.Option("", help="What the change is for."), as_json: bool = _JSON) -> None:
    """Save a YAML file as a new draft (the next version number of its product). Refused with every
    field in error (unknown feature or list, wrong type) before anything is stored."""
    from riskloop.decisions import policy_store as store

    actor = _caller("draft")
    features = store.feature_catalog(get_settings())
    p = _run(store.draft, path.read_text(), actor, features=features, note=note)
    out = {"id": p.id, "state": "drafted", "author": actor, "digest": p.digest}
    _dump(out) if as_json else console.print(f"drafted {p.id}: a reviewer approves it with `riskloop policy approve {p.id}`")


def _review(fn_name: str, policy_id: str, reason: str) -> None:
    from riskloop.decisions import policy_store as store

    actor = _caller("review")
    extra = {"require_backtest": get_settings().policy_require_backtest} if fn_name == "approve" else {}
    seq = _run(getattr(store, fn_name), policy_id, actor, reason, **extra)
    _dump({"id": policy_id, "step": fn_name, "actor": actor, "seq": seq})


@policy_app.command("approve")
def approve(policy_id: str = typer.Argument(...), reason: str = typer.Option("", "--reason")) -> None:
    """Approve a draft (reviewer, not its author): live in every serving process within a second."""
    _review("approve", policy_id, reason)


@policy_app.command("reject")
def reject(policy_id: str = typer.Argument(...), reason: str = _REASON) -> None:
    """Reject a draft (reviewer)."""
    _review("reject", policy_id, reason)


@policy_app.command("rollback")
def rollback(policy_id: str = typer.Argument(..., help="An earlier approved or shipped version."),
             reason: str = _REASON) -> None:
    """Make an earlier version live again (reviewer), e.g. after a bad approval."""
    _review("rollback", policy_id, reason)


@policy_app.command("shadow")
def shadow(hours: float = typer.Option(24.0, min=0.01, help="Window, back from now."), as_json: bool = _JSON) -> None:
    """Shadow rules (mode: shadow): decisions seen, hits, hit rate and precision on matured labels."""
    from rich.table import Table

    from riskloop.decisions import policy_store as store

    rows = _run(store.shadow_stats, timedelta(hours=hours), get_settings().label_delay_days)
    if as_json:
        _dump(rows)
        return
    table = Table("policy", "rule", "decisions", "hits", "hit rate", "matured hits", "precision")
    for r in rows:
        table.add_row(r["policy_version"], r["rule"], str(r["decisions"]), str(r["hits"]),
                      f"{r['hit_rate']:.4f}" if r["hit_rate"] is not None else "",
                      str(r["matured_hits"]), f"{r['precision']:.3f}" if r["precision"] is not None else "")
    console.print(table)


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
    attach: bool = typer.Option(False, "--attach", help="Attach the report to the stored draft (the approver reads "
                                "it); acts as the CLI's key (role policy)."),
    list_change: Optional[list[int]] = typer.Option(None, "--list-change", help="A drafted list change to apply to "
                                                    "the candidate's lists first (repeatable): a rule and the list "
                                                    "change it needs, backtested together."),
) -> None:
    """Replay the decision log of [--from, --to) under the candidate policy (the logged score, request,
    features and signals; no model, no network): decisions that change by outcome, approval/review/deny
    rates before and after, fraud caught and good payments impacted on matured labels, the review
    queue per day, and examples. Exit 2 when the policy or the period is refused."""
    from riskloop.core import db
    from riskloop.decisions import policy_store as store
    from riskloop.decisions.backtest import BacktestError, parse_time
    from riskloop.decisions.backtest import backtest as run
    from riskloop.decisions.policy import PolicyError

    actor = _caller("draft") if attach else None
    try:
        with db.connect(get_settings(), autocommit=True) as conn:
            policy = store.with_current_lists(conn, version, list_change or ())  # a stored draft or a shipped file
        start, end = parse_time(from_), parse_time(to)
        report = run(get_settings(), policy, start, end, as_of=parse_time(as_of) if as_of else None,
                     examples=examples, workers=workers)
        report.list_changes = list(list_change or ())
    except (PolicyError, BacktestError, ValueError) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from exc
    if actor is not None:
        _run(store.attach_backtest, version, actor, json.loads(json.dumps(report.to_dict(), default=str)))
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
                  f"{report.n_decisions:,} decisions, {report.n_changed:,} change ({report.seconds:.1f} s)"
                  + (f", with drafted list change(s) {', '.join(map(str, report.list_changes))}"
                     if report.list_changes else ""))
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


# --- emergency ------------------------------------------------------------------------------------

@policy_app.command("stop")
def stop(kind: str = typer.Argument(..., help="review_above, deny_bin, deny_terminal, deny_card or rules_only."),
         value: Optional[str] = typer.Argument(None, help="The amount in minor units (review_above), the BIN, "
                                              "terminal id or card token (deny_*)."),
         reason: str = _REASON,
         expires_in: str = typer.Option(..., "--for", help="Required expiry from now: 90s, 30m, 2h, 1d."),
         product: str = typer.Option("fraud", help="fraud (any kind) or credit (rules_only)."),
         as_json: bool = _JSON) -> None:
    """Emergency stop (admin): live in every serving process within a second, logged and alerted."""
    from riskloop.decisions import policy_store as store

    actor = _caller("emergency")
    kind = kind.replace("-", "_")
    amount = None
    if kind == "review_above":
        if value is None or not value.isdigit():
            raise typer.BadParameter("review_above takes an amount in minor units, e.g. 500000")
        amount, value = int(value), None
    row = _run(store.stop, kind, actor, reason, parse_duration(expires_in), amount_minor=amount, value=value,
               product=product)
    store.alert_stop(get_settings(), row)
    _dump(row) if as_json else console.print(f"[bold red]emergency stop {row['stop_id']}[/bold red] {kind} "
                                             f"{amount or value or ''} until {row['expires_at']}")


@policy_app.command("lift")
def lift(stop_id: int = typer.Argument(...), reason: str = _REASON) -> None:
    """End an emergency stop before its expiry (admin)."""
    from riskloop.decisions import policy_store as store

    actor = _caller("emergency")
    _dump({"stop_id": stop_id, "lifted": True, "seq": _run(store.lift, stop_id, actor, reason)})


@policy_app.command("emergency")
def emergency(as_json: bool = _JSON) -> None:
    """The emergency stops in force now."""
    from riskloop.decisions import policy_store as store

    rows = _run(store.active_emergency)
    if as_json or not rows:
        _dump(rows)
        return
    for r in rows:
        console.print(f"[bold red]{r['stop_id']}[/bold red] {r['product']} {r['kind']} "
                      f"{r['amount_minor'] or r['value'] or ''} by {r['actor']} until {r['expires_at']}: {r['reason']}")


# --- lists ----------------------------------------------------------------------------------------

@lists_app.command("show")
def lists_show(as_json: bool = _JSON) -> None:
    """Every list, its kind and its entries in force."""
    from riskloop.decisions import policy_store as store

    _dump(_run(store.lists))


@lists_app.command("create")
def lists_create(name: str = typer.Argument(...), kind: str = typer.Option(..., help="card, customer, terminal, "
                 "device, ip, country or bin."), description: str = typer.Option("")) -> None:
    """A new, empty list (rules then name it in ``in_list``)."""
    from riskloop.decisions import policy_store as store

    _run(store.create_list, name, kind, _caller("lists"), description)
    _dump({"name": name, "kind": kind})


def _expiry(expires_in: Optional[str]) -> Optional[datetime]:
    from datetime import UTC

    return None if expires_in is None else datetime.now(UTC) + parse_duration(expires_in)


@lists_app.command("add")
def lists_add(name: str = typer.Argument(...), entries: list[str] = typer.Argument(...), reason: str = _REASON,
              expires_in: Optional[str] = typer.Option(None, "--for", help="Optional expiry: 30m, 2h, 7d.")) -> None:
    """Draft adding entries: live in every serving process once someone else approves the change
    (`riskloop policy lists approve CHANGE_ID`). Urgent blocks: `riskloop policy stop`."""
    from riskloop.decisions import policy_store as store

    _dump(_run(store.add_entries, name, entries, reason, _caller("lists"), _expiry(expires_in), source="cli"))


@lists_app.command("remove")
def lists_remove(name: str = typer.Argument(...), entries: list[str] = typer.Argument(...), reason: str = _REASON) -> None:
    """Draft removing entries (their history stays), applied once someone else approves it."""
    from riskloop.decisions import policy_store as store

    _dump(_run(store.remove_entries, name, entries, reason, _caller("lists"), source="cli"))


@lists_app.command("import")
def lists_import(name: str = typer.Argument(...),
                 path: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV: entry[,reason[,expires_at]]."),
                 reason: str = typer.Option("", "--reason", help="For rows without a reason column."),
                 expires_in: Optional[str] = typer.Option(None, "--for", help="For rows without an expires_at.")) -> None:
    """Draft adding every entry of a CSV as one list change (a bad row refuses the file, with its line)."""
    from riskloop.decisions import policy_store as store

    _dump(_run(store.import_csv, name, path.read_text(), _caller("lists"), reason, _expiry(expires_in)))


@lists_app.command("changes")
def lists_changes(state: Optional[str] = typer.Option("drafted", help="drafted, approved or rejected ('' = all)."),
                  name: Optional[str] = typer.Option(None, "--list", help="Only this list.")) -> None:
    """List changes, newest first, with their first entries (JSON lines)."""
    from riskloop.decisions import policy_store as store

    for row in _run(store.list_changes, state or None, name):
        _dump(row)


@lists_app.command("approve")
def lists_approve(change_id: int = typer.Argument(...), reason: str = typer.Option("", "--reason")) -> None:
    """Approve a drafted list change (reviewer, not its author): live in every serving process within a second."""
    from riskloop.decisions import policy_store as store

    actor = _caller("review")
    _dump({"change_id": change_id, "step": "approve", "actor": actor,
           "seq": _run(store.approve_list_change, change_id, actor, reason)})


@lists_app.command("reject")
def lists_reject(change_id: int = typer.Argument(...), reason: str = _REASON) -> None:
    """Reject a drafted list change (reviewer)."""
    from riskloop.decisions import policy_store as store

    actor = _caller("review")
    _dump({"change_id": change_id, "step": "reject", "actor": actor,
           "seq": _run(store.reject_list_change, change_id, actor, reason)})


@lists_app.command("history")
def lists_history(name: str = typer.Argument(...), entry: Optional[str] = typer.Option(None)) -> None:
    """Every change of a list (or of one entry), oldest first, as JSON lines."""
    from riskloop.decisions import policy_store as store

    for row in _run(store.entry_history, name, entry):
        _dump(row)
