"""What every command module shares: the console on stderr (stdout carries JSON for scripts), and
the principal a governance command acts as."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from riskloop.core.config import Settings
    from riskloop.core.identity import Principal

console = Console(stderr=True)


def acting_principal(settings: "Settings", action: str) -> "Principal":
    """The CLI's principal (its RISKLOOP_API_KEY), allowed to do ``action``; exit 2 with the reason otherwise."""
    from riskloop.core.identity import Forbidden, IdentityError, cli_principal

    try:
        return cli_principal(settings, action)
    except (IdentityError, Forbidden) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from exc
