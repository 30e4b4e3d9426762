"""``riskloop policy``: versions, lists and emergency stops of the policy store (the same calls as
``/v1/policy``). Who acts is the CLI's own API key (``RISKLOOP_API_KEY``), never a name typed here."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import typer

from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer()
policy_app = typer.Typer(help="Decision policies as versioned data: drafts, maker-checker approval, lists, "
                         "shadow rules and emergency stops.", no_args_is_help=True)
lists_app = typer.Typer(help="Named lists (cards, customers, terminals, devices, IPs, countries, BINs) the rules "
                        "look up; every change is an append-only row with a reason.", no_args_is_help=True)
policy_app.add_typer(lists_app, name="lists")
app.add_typer(policy_app, name="policy")

_JSON = typer.Option(False, "--json", help="Machine-readable output on stdout.")
_REASON = typer.Option(..., "--reason", help="Why (recorded with the change; required).")
# Who may do what: the same roles as the API (serving.auth.PERMISSIONS).
_ROLES = {"draft": {"policy"}, "review": {"reviewer"}, "lists": {"policy"}, "emergency": {"admin"}}


def _caller(action: str) -> str:
    """The actor of the CLI's key, refused (exit 1) if its role may not do ``action``."""
    try:
        from riskloop.core.identity import cli_principal  # type: ignore[import-not-found]

        principal = cli_principal(get_settings())
        name, role = principal.actor, principal.role
    except ImportError:  # until the identity module lands: RISKLOOP_API_KEY against RISKLOOP_API_KEYS
        name, role = _key_principal()
    if role not in _ROLES[action]:
        console.print(f"[red]refused:[/red] role {role!r} may not {action} (needs {sorted(_ROLES[action])})")
        raise typer.Exit(1)
    return name


def _key_principal() -> tuple[str, str]:
    key = os.environ.get("RISKLOOP_API_KEY", "").strip()
    if not key:
        console.print("[red]refused:[/red] set RISKLOOP_API_KEY (your key, one of RISKLOOP_API_KEYS)")
        raise typer.Exit(1)
    for item in os.environ.get("RISKLOOP_API_KEYS", "").split(","):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) >= 3 and ":".join(parts[2:]) == key:  # name:role:key
            return parts[0], parts[1].lower()
        k, _, role = item.strip().rpartition(":")
        if k.strip() == key:  # key:role, named like serving.auth does
            return f"{role.strip().lower()}:{hashlib.sha256(key.encode()).hexdigest()[:12]}", role.strip().lower()
    console.print("[red]refused:[/red] RISKLOOP_API_KEY is not one of RISKLOOP_API_KEYS")
    raise typer.Exit(1)


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str, indent=None))


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One store call on an autocommit connection; a refusal prints why and exits 1."""
    from riskloop.core import db
    from riskloop.decisions import policy_store as store

    try:
        with db.connect(get_settings(), autocommit=True) as conn:
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
    seq = _run(getattr(store, fn_name), policy_id, actor, reason)
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
    """Add entries (live in every serving process within a second)."""
    from riskloop.decisions import policy_store as store

    _dump({"list": name, "added": _run(store.add_entries, name, entries, reason, _caller("lists"),
                                       _expiry(expires_in), source="cli")})


@lists_app.command("remove")
def lists_remove(name: str = typer.Argument(...), entries: list[str] = typer.Argument(...), reason: str = _REASON) -> None:
    """Remove entries (their history stays)."""
    from riskloop.decisions import policy_store as store

    _dump({"list": name, "removed": _run(store.remove_entries, name, entries, reason, _caller("lists"), source="cli")})


@lists_app.command("import")
def lists_import(name: str = typer.Argument(...),
                 path: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV: entry[,reason[,expires_at]]."),
                 reason: str = typer.Option("", "--reason", help="For rows without a reason column."),
                 expires_in: Optional[str] = typer.Option(None, "--for", help="For rows without an expires_at.")) -> None:
    """Add every entry of a CSV in one transaction (a bad row refuses the file, with its line)."""
    from riskloop.decisions import policy_store as store

    _dump({"list": name, "added": _run(store.import_csv, name, path.read_text(), _caller("lists"), reason,
                                       _expiry(expires_in))})


@lists_app.command("history")
def lists_history(name: str = typer.Argument(...), entry: Optional[str] = typer.Option(None)) -> None:
    """Every change of a list (or of one entry), oldest first, as JSON lines."""
    from riskloop.decisions import policy_store as store

    for row in _run(store.entry_history, name, entry):
        _dump(row)
