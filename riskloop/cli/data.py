"""Data in: ``riskloop simulate | stream | import | replay | batch``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer()


@app.command()
def simulate(
    days: int = typer.Option(30, help="Days to simulate."),
    customers: int = typer.Option(5000, help="Number of customers."),
    terminals: Optional[int] = typer.Option(None, help="Terminals (default 2 per customer)."),
    seed: int = typer.Option(42, help="Random seed: same seed, same data."),
    out: Path = typer.Option(..., help="Directory to write the landed files to."),
    preset: Optional[str] = typer.Option(None, help="'handbook': 5,000 customers, 10,000 terminals, 183 days."),
    drift: Optional[str] = typer.Option(
        None, help="Inject drift from --drift-from on: 'amount-shift' (every amount x --drift-factor) or "
                   "'new-fraud-pattern' (night-time card-testing bursts of tiny payments, fraud scenario 4)."),
    drift_from: Optional[str] = typer.Option(None, "--drift-from", help="First drifted day, YYYY-MM-DD (UTC)."),
    drift_factor: float = typer.Option(3.0, "--drift-factor", help="Amount multiplier of --drift amount-shift."),
    applications_per_customer: float = typer.Option(
        1.0, "--applications-per-customer", min=0, help="Mean credit applications per customer."),
    credit_bias: float = typer.Option(
        0.0, "--credit-bias", min=0, help="True bias of the credit world against the under_35 age band: their "
        "latent risk raised by this many standard deviations (0: the band is independent of risk)."),
) -> None:
    """Simulate card payments (the fraud handbook's generator) and the raw feeds derived from them,
    optionally with drift injected after a date (docs: riskloop/simulator/drift.py)."""
    from riskloop import simulator

    try:
        simulator.resolve_params(days, customers, seed, terminals, None, preset, drift=drift, drift_from=drift_from,
                                 drift_factor=drift_factor, applications_per_customer=applications_per_customer,
                                 credit_bias=credit_bias)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with console.status("simulating"):
        sim = simulator.simulate(days=days, customers=customers, terminals=terminals, seed=seed, preset=preset,
                                 drift=drift, drift_from=drift_from, drift_factor=drift_factor,
                                 applications_per_customer=applications_per_customer, credit_bias=credit_bias)
        manifest = simulator.write(sim, out)
    console.print_json(json.dumps(manifest, default=str))


@app.command()
def stream(
    name: str = typer.Option("default", help="Consumer name (its offset; one running consumer per name)."),
    once: bool = typer.Option(False, "--once", help="Process what is committed now, then exit."),
    partitions: int = typer.Option(
        1, "--partitions", min=1, help="Consumers splitting the cards and customers between them (one process each, "
        "every one with the same --name and --partitions)."),
    partition: int = typer.Option(0, "--partition", min=0, help="Which of the --partitions this process is (0-based)."),
) -> None:
    """Tail the webhook inbox: accepted payments update the card and customer windows (10m/1h/24h
    counts and sums) in the Feast online store. Runs until SIGINT/SIGTERM; restarts resume.
    With --partitions N, run N processes (--partition 0 … N-1): each pushes only its share of the keys."""
    import signal
    import threading

    from riskloop.core.config import get_settings
    from riskloop.features.stream import StreamConsumer

    if partition >= partitions:
        raise typer.BadParameter(f"--partition {partition} is not below --partitions {partitions}")
    with StreamConsumer(get_settings().as_role("ingest"), name=name, partitions=partitions, partition=partition) as consumer:
        if once:
            console.print_json(json.dumps(consumer.run_once().__dict__))
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        consumer.run(stop)


import_app = typer.Typer(help="Load external data through the same path as simulated data.", no_args_is_help=True)


@import_app.command("handbook")
def import_(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A handbook-schema Parquet file."),
    seed: int = typer.Option(0, help="Seed of the derived feeds (disputes, KYC, credit)."),
    no_materialize: bool = typer.Option(False, "--no-materialize", help="Skip Feast apply/materialize."),
    applications_per_customer: Optional[float] = typer.Option(
        None, "--applications-per-customer", min=0,
        help="Mean credit applications derived per card customer (default: "
             "riskloop.ops.handbook.HANDBOOK_APPLICATIONS_PER_CUSTOMER, 8: a lender's application flow, enough "
             "test applications to measure the credit model's calibration)."),
) -> None:
    """Derive raw feeds from a Fraud Detection Handbook file and run ingest → contracts → dbt → Feast."""
    from dataclasses import asdict

    from riskloop.ops.handbook import import_handbook

    result = import_handbook(get_settings(), path, seed=seed, materialize=not no_materialize,
                             applications_per_customer=applications_per_customer)
    console.print_json(json.dumps(asdict(result)))


app.add_typer(import_app, name="import")


replay_app = typer.Typer(help="Re-send archived data to a running riskloop.", no_args_is_help=True)


@replay_app.command("webhooks")
def replay_webhooks(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSON-lines archive, one body per line."),
    url: str = typer.Option(..., help="Receiver endpoint, e.g. http://127.0.0.1:8000/webhooks/stripe."),
    scheme: Optional[str] = typer.Option(None, help="stripe or standard (default: from the file name)."),
    concurrency: int = typer.Option(8, min=1, max=256, help="Requests in flight."),
) -> None:
    """Sign each line with the first RISKLOOP_WEBHOOK_SECRETS_<SCHEME> secret and POST it (exit 1 unless all 2xx)."""
    from riskloop.core.signatures import SCHEMES
    from riskloop.data.webhook_replay import replay

    if scheme is not None and scheme not in SCHEMES:
        raise typer.BadParameter("scheme must be stripe or standard")
    try:
        result = replay(file, url, scheme, concurrency=concurrency)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps(result.to_dict()))
    if not result.ok:
        raise typer.Exit(1)


app.add_typer(replay_app, name="replay")


batch_app = typer.Typer(help="Processors' settlement and dispute files in object storage (RISKLOOP_BATCH_URL).",
                        no_args_is_help=True)


@batch_app.command("deliver")
def batch_deliver(directory: Path = typer.Argument(..., help="A simulation's batch/ directory (riskloop simulate).")
                  ) -> None:
    """Put files into the store's incoming/ prefix, as a processor would (for demos and tests)."""
    from riskloop.core.objectstore import open_store
    from riskloop.data.batch_files import INCOMING

    store = open_store(get_settings())
    files = sorted(p for p in directory.rglob("*.csv") if p.is_file())
    for path in files:
        store.put(f"{INCOMING}/{path.relative_to(directory).as_posix()}", path.read_bytes())
    console.print(f"delivered {len(files)} files to {store.url}/{INCOMING}/")


@batch_app.command("load")
def batch_load() -> None:
    """Load what is in incoming/ into raw (upsert by file + line), archive it; exit 1 if a file was rejected."""
    from riskloop.data.batch_files import load_batch_files

    report = load_batch_files(get_settings().as_role("ingest"), raise_on_rejected=False)
    typer.echo(json.dumps(report.to_dict(), indent=2))
    if report.rejected:
        raise typer.Exit(1)


app.add_typer(batch_app, name="batch")
