"""``riskloop train | benchmark``, registered with the ``riskloop`` command through the
``riskloop.cli`` entry point (riskloop itself never imports training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from riskloop.cli.common import console
from riskloop.core.config import Settings, get_settings, plain_values

app = typer.Typer()


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


benchmark_app = typer.Typer(help="Measure riskloop's models against published results.", no_args_is_help=True)


@benchmark_app.command("handbook")
def benchmark_handbook(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="The handbook Parquet file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results to this JSON file."),
    seed: int = typer.Option(42, help="Model seed."),
    reimport: bool = typer.Option(False, "--reimport", help="Import the file even if the warehouse holds it."),
    namespace: str = typer.Option(
        "handbook", "--namespace",
        help="Namespace of the import (its own warehouse and Feast databases on the same server, so the "
        "handbook's ids never overwrite another dataset's rows); RISKLOOP_NAMESPACE, when set, wins."),
) -> None:
    """The fraud model on the handbook's chapter 3 split and chapter 5 prequential folds (Feast features)."""
    from riskloop.ops.handbook import import_handbook, is_imported
    from riskloop.ops.stack import ensure_namespace
    from training.benchmark import METRICS, run_benchmark

    settings = get_settings()
    if settings.namespace is None:
        settings = Settings(**{**plain_values(settings), "namespace": namespace})
    console.print(f"warehouse {settings.warehouse_db} (namespace {settings.namespace})")
    ensure_namespace(settings)
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
