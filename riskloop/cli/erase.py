"""``riskloop erase customer``: crypto-shred a customer's personal data (riskloop.governance.erasure)."""

from __future__ import annotations

import json

import typer

from riskloop.cli.common import acting_principal, console
from riskloop.core.config import get_settings

app = typer.Typer()
erase_app = typer.Typer(help="Erasure of a data subject's personal data (crypto-shredding).", no_args_is_help=True)


@erase_app.command("customer")
def customer(
    customer_id: str = typer.Argument(..., help="The customer's id, as the scoring requests carry it."),
    reason: str = typer.Option(..., "--reason", help="Why (e.g. the erasure request's reference); recorded."),
    json_out: bool = typer.Option(False, "--json", help="Print the erasure as JSON on stdout."),
) -> None:
    """Destroy the customer's data key, so the personal fields of their logged decisions read
    [erased] while the decisions stay whole; delete their devices, card sightings, open-case entry and
    online features, which materialisation and the stream then never write back for them or their
    cards. Needs a named admin key (RISKLOOP_API_KEY); recorded in privacy.erasures.
    Erasing an erased customer again changes nothing."""
    from riskloop.governance.erasure import ErasureError, erase_customer

    settings = get_settings()
    principal = acting_principal(settings, "erase_subject")
    try:  # as the governance role: it may delete the key and the copies, never a logged decision
        done = erase_customer(settings.as_role("governance"), customer_id, reason, principal)
    except ErasureError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if json_out:
        typer.echo(json.dumps(done.as_dict()))
        return
    if done.already_erased:
        console.print(f"customer already erased at {done.erased_at:%Y-%m-%d %H:%M:%S %Z}: nothing to do")
        return
    console.print(f"erased ({done.erasure_id}, by {done.actor}): data key "
                  f"{'destroyed' if done.key_destroyed else 'absent (nothing was sealed for this customer)'}")
    for what, n in done.removed.items():
        console.print(f"  {what}: {n}")


app.add_typer(erase_app, name="erase")
